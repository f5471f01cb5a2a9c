import subprocess
import sys

from brainalign import __version__
from brainalign.cli import main


def test_help_and_version(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out
    out = subprocess.run([sys.executable, "-m", "brainalign.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"brainalign {__version__}"


def test_doctor_reports_stack_and_backends(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "himalaya" in out and "numpy            ok" in out
    assert "GPU:" in out and "brainalign cache" in out
