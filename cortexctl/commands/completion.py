"""`cortexctl completion bash|zsh|fish`: print a shell completion script."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cortexctl.output import Output

EXIT_OK = 0
NOTES = """\
Install one:
  bash  cortexctl completion bash > ~/.local/share/bash-completion/completions/cortexctl
        (`make install` puts it in /usr/local/share/bash-completion/completions)
  zsh   cortexctl completion zsh > "${fpath[1]}/_cortexctl"
  fish  cortexctl completion fish > ~/.config/fish/completions/cortexctl.fish
Alert ids, fix ids and plugin names are asked from the daemon (0.5 s at most)."""


def _completion(client: None, args: Any, out: Output) -> int:
    from cortexctl.completion import script

    text = script(args.shell)
    out.result({"shell": args.shell, "script": text}, lambda _: out.stream.write(text))
    return EXIT_OK


def register(sub: Any) -> None:
    """Add `completion` to the top-level subparsers."""
    from cortexctl.completion import SHELLS
    from cortexctl.parsing import command

    completion = command(
        sub,
        "completion",
        help="print a shell completion script",
        notes=NOTES,
        examples=[
            "cortexctl completion bash > ~/.local/share/bash-completion/completions/cortexctl",
            "cortexctl completion zsh > ~/.zfunc/_cortexctl",
            "cortexctl completion fish > ~/.config/fish/completions/cortexctl.fish",
        ],
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell: " + ", ".join(SHELLS))
    completion.set_defaults(run=_completion, offline=True)
