"""Speed of phase detection (run: .venv/bin/python benchmarks/bench_dynamics.py)."""
import time, numpy as np, sys
from brainalign.dynamics import detect_phases
rng = np.random.default_rng(0); u = np.linspace(6, 10, 40)
y = 0.6*(u-6) - 1.1*np.maximum(u-7.2, 0) + 1.2*np.maximum(u-8.6, 0)
t0 = time.perf_counter()
for _ in range(50): detect_phases((10**u, y + rng.normal(0, .03, 40)), n_boot=0)
t1 = time.perf_counter()
detect_phases((10**u, y + rng.normal(0, .03, 40)), n_boot=200)
t2 = time.perf_counter()
print(f"detect_phases, 40 checkpoints: {(t1-t0)/50*1e3:.1f} ms without bootstrap, {(t2-t1):.2f} s with n_boot=200")
