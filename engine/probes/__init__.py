"""What the box shows: host (psutil), GPUs (NVML, or simulated), and attribution of usage
to runyard runs versus everyone else."""
