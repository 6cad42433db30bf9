"""Representation-learning methods, one module each: its criterion, heads, views and recipes together.

`coke/` (CoKe), `simclr`, `vicreg`, `barlow_twins`, `byol`, `mocov3`, `dino`: the criteria are registered with
`criteria.build_criterion` under those names; the SSL baselines are called as criterion(student, teacher=None).
"""
