"""Where an experiment lives on its instance (paths relative to the instance's $HOME).

  vasticlaude/<experiment>/code/          the pushed working directory (the job's cwd)
  vasticlaude/<experiment>/run/           wrapper files: job.log, exit_code, heartbeat, started_at…
  vasticlaude/<experiment>/checkpoints/   $VASTICLAUDE_CHECKPOINT_DIR: what a resume needs
  vasticlaude/<experiment>/outputs/       $VASTICLAUDE_OUTPUT_DIR: results to bring home

Relative paths work the same for ssh (whose cwd is $HOME) and for rsync's
`host:path`, on Vast (/root) and on the sandbox (a per-instance home).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    experiment: str

    @property
    def base(self) -> str:
        return f"vasticlaude/{self.experiment}"

    @property
    def code(self) -> str:
        return f"{self.base}/code"

    @property
    def run(self) -> str:
        return f"{self.base}/run"

    @property
    def checkpoints(self) -> str:
        return f"{self.base}/checkpoints"

    @property
    def outputs(self) -> str:
        return f"{self.base}/outputs"
