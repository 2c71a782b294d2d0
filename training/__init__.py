"""Offline training: teachers, students (with self-supervised imitation), baselines, run_all."""
