"""The CLI run in the test's own process (`cli.main(argv)`), its output captured by pytest's `capsys`: what
`subprocess.run([python, "-m", "clipood_kit.cli", ...])` gives, without a fresh interpreter's imports (about 3 s of
CPU each). Tests of what only a process of its own shows (a signal or a kill, the bits of a fresh process) run the
CLI as a subprocess."""
from dataclasses import dataclass


@dataclass
class Completed:
    """Named as `subprocess.CompletedProcess` names them; unpacks as (code, out, err)."""
    returncode: int
    stdout: str
    stderr: str

    def __iter__(self):
        return iter((self.returncode, self.stdout, self.stderr))


def run_cli(argv, capsys) -> Completed:
    """Exit code (argparse's own errors included), stdout and stderr of `clipood-kit ARGV`; an uncaught exception
    fails the test, as a traceback would."""
    from clipood_kit import cli
    capsys.readouterr()                         # what the test printed before is not the CLI's
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return Completed(0 if code is None else code, out, err)
