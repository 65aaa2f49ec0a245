"""Statistics, figures and reports from saved per-head tables (never a model).

    tables.py    a run's measurement files → heads DataFrame (+ run metadata, label ↔ run-dir mapping)
    stats.py     Spearman ρ with percentile-bootstrap CIs, top-K overlap, t-intervals
    cases.py     counter-example heads (important-but-static, plastic-but-unimportant)
    figures.py   per-run figures;  compare_figures.py  the two-run figures
    analyze.py   `peftlab analyze`;  compare.py  `peftlab compare`
    aggregate.py `peftlab aggregate` (across seeds);  ranks.py  `peftlab compare-ranks`
    report.py    self-contained HTML (`write_report`, `study_report`)
    adalora.py   AdaLoRA run plots + `peftlab adalora compare`;  adalora_view.py  its table.md and compare.png
    adalora_heads.py  AdaLoRA final q/k/v/o ranks vs summed head measurements (part of `peftlab analyze`)
"""
