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


def _folder(name: str) -> property:
    return property(lambda self: f"{self.base}/{name}", doc=f"the experiment's {name}/ folder")


@dataclass(frozen=True)
class Layout:
    experiment: str

    @property
    def base(self) -> str:
        return f"vasticlaude/{self.experiment}"

    code = _folder("code")
    run = _folder("run")
    checkpoints = _folder("checkpoints")
    outputs = _folder("outputs")
