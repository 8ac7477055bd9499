"""Shared helpers of the benchmarks: process setup and environment (`env`), exact memory accounting (`memory`),
Trainer-driven timing (`timing`), model builders (`models`), data (`data`) and report writing (`report`)."""
