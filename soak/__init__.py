"""Soak test: sessions publishing scans back to back, writers and subscribers, for minutes.

``python -m soak [--duration SECONDS] [--json PATH]`` starts a private server, 4 publisher
processes (one session each), 2 ``scanstream writer`` processes (2 sessions each) and 4
subscriber processes (all 4 sessions each), samples the memory of every process and of Redis,
and at the end checks that every file equals Redis bit for bit (and the data the publishers
were meant to publish), that every subscriber saw every scan end with exactly the published
number of points, and that memory stayed flat. See docs/reliability.md, "Soak test".

``python -m soak.killloop [--rounds N]`` kills and freezes writers at random instants during a
mixed workload and checks that no saved data is lost or damaged (docs/reliability.md, "Kill
loop"); ``python -m soak.layout_kill`` measures what a kill does to each file organisation.
"""
