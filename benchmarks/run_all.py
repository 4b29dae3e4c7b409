"""Run the CPU benchmarks one after the other (never in parallel: they share the cores)."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
for script in ("world_render.py", "step_overhead.py", "trainer_overhead.py", "state_scorer.py", "loader_throughput.py",
               "widget_callbacks.py"):
    subprocess.run([sys.executable, str(HERE / script)], check=True)
