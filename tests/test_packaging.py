import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    out = {}
    for line in lines:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;]+)\s*", line)
        assert m, f"unpinned requirement {line!r}"
        out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_yml_and_pyproject_pin_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("notebooks", "test"):
        wanted += project["optional-dependencies"][extra]
    env_lines, in_pip = [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.strip() == "- pip:":
            in_pip = True
            continue
        if in_pip and line.strip().startswith("- "):
            env_lines.append(line.strip()[2:])
    assert _pins(wanted) == _pins(env_lines)


def test_repository_stays_small():
    import subprocess
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    total = sum((ROOT / f).stat().st_size for f in files if (ROOT / f).exists())
    assert total < 40e6, f"tracked files hold {total / 1e6:.1f} MB (limit 40 MB)"
    shipped = ROOT / "data" / "tiny-clip-world.safetensors"
    assert shipped.stat().st_size <= 16 * 2**20
