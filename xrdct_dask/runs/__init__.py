"""The run layer: open a run (inputs, scan layout, store template, resume), execute it in waves,
follow an acquisition (live), reprocess, plan, report, and the job service."""
