"""Named, append-only schema migrations, applied before a store is first written.

Each migration is a (name, function) pair run in its own transaction and recorded in
`_migrations(name, applied_at)`. Existing stores only ever move forward: never edit or
reorder a migration that has shipped; append a new one. tests/test_store.py asserts the
whole resulting schema so that every change is deliberate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import duckdb

from ichbench.store.baselines import COLUMNS as BASELINE_COLUMNS
from ichbench.store.baselines import SEED_V1

Migration = tuple[str, Callable[[duckdb.DuckDBPyConnection], None]]

RUN_STATUSES = ("running", "finished", "failed", "interrupted")
METRIC_NAMES = ("sensitivity", "specificity", "precision", "f1", "accuracy", "auc")


def _ci_columns() -> str:
    return ",\n".join(f"    {m}_lo DOUBLE, {m}_hi DOUBLE" for m in METRIC_NAMES)


def m001_initial_tables(con: duckdb.DuckDBPyConnection) -> None:
    statuses = ", ".join(f"'{s}'" for s in RUN_STATUSES)
    con.execute(f"""
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY,
    status VARCHAR NOT NULL CHECK (status IN ({statuses})),
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    dataset VARCHAR,
    dataset_hash VARCHAR,
    config JSON,
    config_hash VARCHAR,
    backbone VARCHAR,
    strategies VARCHAR[],
    ensemble VARCHAR,
    patient_rule VARCHAR,
    seed BIGINT,
    preset VARCHAR,
    device VARCHAR,
    pretrained BOOLEAN,
    pretrained_source VARCHAR,
    threshold DOUBLE,
    wall_s DOUBLE,
    versions JSON,
    git_sha VARCHAR,
    split_hash VARCHAR,
    grid_id VARCHAR,
    error VARCHAR
)""")
    con.execute("""
CREATE TABLE splits (
    run_id VARCHAR NOT NULL,
    fold INTEGER,
    patient_id INTEGER NOT NULL,
    role VARCHAR NOT NULL CHECK (role IN ('train', 'val', 'test')),
    CHECK ((role = 'test') = (fold IS NULL))
)""")
    con.execute("""
CREATE TABLE folds (
    run_id VARCHAR NOT NULL,
    fold INTEGER NOT NULL,
    status VARCHAR NOT NULL,
    threshold DOUBLE,
    best_epoch INTEGER,
    train_ich_before INTEGER,
    train_healthy_before INTEGER,
    train_ich INTEGER,
    train_healthy INTEGER,
    added INTEGER,
    removed INTEGER,
    train_patients INTEGER[],
    val_patients INTEGER[],
    wall_s DOUBLE,
    checkpoint VARCHAR,
    written_at TIMESTAMP NOT NULL,
    PRIMARY KEY (run_id, fold)
)""")
    con.execute("""
CREATE TABLE epochs (
    run_id VARCHAR NOT NULL,
    fold INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    train_loss DOUBLE,
    val_loss DOUBLE,
    val_f1 DOUBLE,
    wall_s DOUBLE,
    PRIMARY KEY (run_id, fold, epoch)
)""")
    con.execute(f"""
CREATE TABLE metrics (
    run_id VARCHAR NOT NULL,
    fold INTEGER,
    model VARCHAR NOT NULL CHECK (model IN ('fold', 'vote')),
    scope VARCHAR NOT NULL CHECK (scope IN ('slice', 'patient')),
    split VARCHAR NOT NULL CHECK (split IN ('val', 'test')),
    threshold DOUBLE,
    sensitivity DOUBLE,
    specificity DOUBLE,
    precision DOUBLE,
    f1 DOUBLE,
    accuracy DOUBLE,
    auc DOUBLE,
    tp INTEGER,
    fp INTEGER,
    tn INTEGER,
    fn INTEGER,
    n INTEGER,
{_ci_columns()},
    ci_method VARCHAR,
    CHECK ((model = 'vote') = (fold IS NULL))
)""")
    con.execute("""
CREATE TABLE curves (
    run_id VARCHAR NOT NULL,
    fold INTEGER,
    threshold DOUBLE NOT NULL,
    f1 DOUBLE
)""")
    con.execute("""
CREATE TABLE predictions (
    run_id VARCHAR NOT NULL,
    fold INTEGER,
    split VARCHAR NOT NULL CHECK (split IN ('val', 'test')),
    patient_id INTEGER NOT NULL,
    slice INTEGER NOT NULL,
    label INTEGER NOT NULL CHECK (label IN (0, 1)),
    prob DOUBLE
)""")
    con.execute("""
CREATE TABLE baselines (
    source VARCHAR NOT NULL,
    citation VARCHAR NOT NULL,
    model VARCHAR NOT NULL CHECK (model IN ('fold', 'vote', 'single')),
    backbone VARCHAR,
    setting VARCHAR,
    scope VARCHAR NOT NULL CHECK (scope IN ('slice', 'patient')),
    split VARCHAR NOT NULL CHECK (split IN ('val', 'test')),
    fold INTEGER,
    sensitivity DOUBLE,
    specificity DOUBLE,
    precision DOUBLE,
    f1 DOUBLE,
    accuracy DOUBLE,
    note VARCHAR
)""")


def m002_seed_baselines(con: duckdb.DuckDBPyConnection) -> None:
    placeholders = ", ".join("?" for _ in BASELINE_COLUMNS)
    con.executemany(
        f"INSERT INTO baselines ({', '.join(BASELINE_COLUMNS)}) VALUES ({placeholders})",
        [b.as_tuple() for b in SEED_V1],
    )


def m003_views(con: duckdb.DuckDBPyConnection) -> None:
    # Vote metrics only ever count for finished runs: an interrupted run's partial
    # results must never look like a result.
    con.execute("""
CREATE VIEW run_summary AS
WITH vote AS (
    SELECT m.run_id, m.scope, m.sensitivity, m.specificity, m.precision, m.f1,
           m.accuracy, m.auc
    FROM metrics m JOIN runs r USING (run_id)
    WHERE m.model = 'vote' AND m.split = 'test' AND r.status = 'finished'
),
val AS (
    SELECT run_id, avg(f1) AS mean_val_f1
    FROM metrics
    WHERE model = 'fold' AND scope = 'slice' AND split = 'val'
    GROUP BY run_id
),
done AS (
    SELECT run_id, count(*) AS folds_finished
    FROM folds WHERE status = 'finished' GROUP BY run_id
)
SELECT r.run_id, r.status, r.started_at, r.finished_at, r.dataset, r.backbone,
       r.strategies, r.ensemble, r.patient_rule, r.preset, r.seed, r.device,
       r.pretrained, r.grid_id, r.config_hash, r.dataset_hash, r.threshold,
       coalesce(d.folds_finished, 0) AS folds_finished,
       s.sensitivity AS slice_sensitivity, s.specificity AS slice_specificity,
       s.precision AS slice_precision, s.f1 AS slice_f1, s.accuracy AS slice_accuracy,
       s.auc AS slice_auc,
       p.sensitivity AS patient_sensitivity, p.specificity AS patient_specificity,
       p.precision AS patient_precision, p.f1 AS patient_f1, p.accuracy AS patient_accuracy,
       v.mean_val_f1, r.wall_s, r.error
FROM runs r
LEFT JOIN vote s ON s.run_id = r.run_id AND s.scope = 'slice'
LEFT JOIN vote p ON p.run_id = r.run_id AND p.scope = 'patient'
LEFT JOIN val v ON v.run_id = r.run_id
LEFT JOIN done d ON d.run_id = r.run_id
""")
    con.execute("""
CREATE VIEW vote_vs_baselines AS
WITH vote AS (
    SELECT r.run_id, r.backbone AS run_backbone, r.strategies, r.preset, r.grid_id,
           m.scope, m.sensitivity, m.specificity, m.precision, m.f1, m.accuracy
    FROM metrics m JOIN runs r USING (run_id)
    WHERE m.model = 'vote' AND m.split = 'test' AND r.status = 'finished'
)
SELECT v.run_id, v.run_backbone, v.strategies, v.preset, v.grid_id, v.scope,
       b.source, b.model AS baseline_model, b.backbone AS baseline_backbone, b.setting,
       b.fold AS baseline_fold, b.citation,
       v.f1 AS run_f1, b.f1 AS baseline_f1, v.f1 - b.f1 AS delta_f1,
       v.sensitivity AS run_sensitivity, b.sensitivity AS baseline_sensitivity,
       v.sensitivity - b.sensitivity AS delta_sensitivity,
       v.specificity AS run_specificity, b.specificity AS baseline_specificity,
       v.specificity - b.specificity AS delta_specificity,
       v.precision AS run_precision, b.precision AS baseline_precision,
       v.precision - b.precision AS delta_precision,
       v.accuracy AS run_accuracy, b.accuracy AS baseline_accuracy,
       v.accuracy - b.accuracy AS delta_accuracy,
       v.f1 > b.f1 AS beats_f1,
       1 + count(*) FILTER (WHERE b.f1 > v.f1)
           OVER (PARTITION BY v.run_id, v.scope) AS f1_rank,
       count(*) FILTER (WHERE b.f1 IS NOT NULL)
           OVER (PARTITION BY v.run_id, v.scope) + 1 AS f1_ranked_of
FROM vote v
JOIN baselines b ON b.scope = v.scope AND b.split = 'test'
""")


def m004_owner_and_compiled(con: duckdb.DuckDBPyConnection) -> None:
    """The process running a run (so nobody resumes a live run), and whether each fold
    trained through torch.compile (which is not part of the config hash)."""
    con.execute("ALTER TABLE runs ADD COLUMN owner VARCHAR")
    con.execute("ALTER TABLE folds ADD COLUMN compiled BOOLEAN")


def m005_patient_decisions_notes_plugins(con: duckdb.DuckDBPyConnection) -> None:
    """Patient decisions as the run's rule made them (so a reader never needs the rule
    plugin), each fold's strategy notes, and the plugin distributions a run used."""
    con.execute("""
CREATE TABLE patient_decisions (
    run_id VARCHAR NOT NULL,
    fold INTEGER,
    split VARCHAR NOT NULL CHECK (split IN ('val', 'test')),
    patient_id INTEGER NOT NULL,
    label INTEGER NOT NULL CHECK (label IN (0, 1)),
    score DOUBLE,
    decision BOOLEAN NOT NULL
)""")
    con.execute("ALTER TABLE folds ADD COLUMN notes JSON")
    con.execute("ALTER TABLE runs ADD COLUMN plugins JSON")


# What `outer_fold` is on rows written before it existed (one outer fold, every run): 0 on
# a fold's rows and the split, NULL on the vote's (the headline). Also how a reader sees
# an older store it must not upgrade (`ichbench.store.health.compat_views`).
OUTER_FOLD_OF_OLDER_ROWS = {
    "splits": "0",
    "folds": "0",
    "epochs": "0",
    "metrics": "CASE WHEN model = 'fold' THEN 0 END",
    "curves": "CASE WHEN fold IS NOT NULL THEN 0 END",
    "predictions": "CASE WHEN fold IS NOT NULL THEN 0 END",
    "patient_decisions": "CASE WHEN fold IS NOT NULL THEN 0 END",
}


# A run is compared like for like with the study only on its data (the PhysioNet
# release) with its setup (ImageNet ResNet50 through the paper preset); anything else is
# shown beside the literature with a caveat, never as "beats the paper".
COMPARABLE = (
    "(r.dataset LIKE 'physionet%' AND r.backbone = 'resnet50' AND r.preset = 'paper' "
    "AND coalesce(r.pretrained, false))"
)


def _rekey(con: duckdb.DuckDBPyConnection, table: str, key: tuple[str, ...]) -> None:
    """Rebuild `table` with an `outer_fold` column (0 on every row it holds) and the
    primary key `key`: DuckDB cannot change a table's key in place. Built from the columns
    the table has (their types and NOT NULLs kept), so it holds whatever the store's
    history gave it."""
    columns = con.execute(
        "SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
        "WHERE schema_name = 'main' AND table_name = ? ORDER BY column_index",
        [table],
    ).fetchall()
    names = [name for name, _, _ in columns]
    defs = [f"{name} {dtype}{'' if nullable else ' NOT NULL'}" for name, dtype, nullable in columns]
    defs.append("outer_fold INTEGER NOT NULL DEFAULT 0")
    con.execute(f"CREATE TABLE {table}_keyed ({', '.join(defs)}, PRIMARY KEY ({', '.join(key)}))")
    listed = ", ".join(names)
    con.execute(f"INSERT INTO {table}_keyed ({listed}) SELECT {listed} FROM {table}")
    con.execute(f"DROP TABLE {table}")
    con.execute(f"ALTER TABLE {table}_keyed RENAME TO {table}")


def m006_outer_folds(con: duckdb.DuckDBPyConnection) -> None:
    """Nested cross-validation: every per-split row says which outer fold it belongs to
    (`outer_fold`, 0 for every run made before, which had one), and the run's headline
    vote rows have `outer_fold` NULL: with one outer fold, the vote itself; with several,
    the outer folds' test decisions pooled. (`outer` is a reserved word in SQL.) The views
    count the headline only, give the spread of the folds' validation F1, and say whether
    a run is comparable with the literature at all and which reported numbers lie inside
    its confidence intervals."""
    for table in ("splits", "metrics", "curves", "predictions", "patient_decisions"):
        con.execute(f"ALTER TABLE {table} ADD COLUMN outer_fold INTEGER")
        con.execute(f"UPDATE {table} SET outer_fold = {OUTER_FOLD_OF_OLDER_ROWS[table]}")
    # a fold is now (outer fold, fold): the keys are rebuilt around it
    _rekey(con, "folds", ("run_id", "outer_fold", "fold"))
    _rekey(con, "epochs", ("run_id", "outer_fold", "fold", "epoch"))
    # calibration of each model's scores (slice level), and what the run warned about its
    # vote (a vote the fold models' validation results say not to trust)
    con.execute("ALTER TABLE metrics ADD COLUMN brier DOUBLE")
    con.execute("ALTER TABLE metrics ADD COLUMN ece DOUBLE")
    con.execute("ALTER TABLE runs ADD COLUMN warnings JSON")
    con.execute("ALTER TABLE runs ADD COLUMN calibration JSON")
    # the ensemble rule's own decision on each vote slice (NULL on a fold model's rows)
    con.execute("ALTER TABLE predictions ADD COLUMN decision BOOLEAN")
    # a grid's honest estimate: the configuration picked in each outer fold, and the
    # picks' test results pooled (`ichbench.selection`)
    con.execute("""
CREATE TABLE grid_selections (
    grid_id VARCHAR NOT NULL,
    outer_fold INTEGER NOT NULL,
    run_id VARCHAR NOT NULL,
    mean_val_f1 DOUBLE,
    PRIMARY KEY (grid_id, outer_fold)
)""")
    con.execute(f"""
CREATE TABLE grid_selection_metrics (
    grid_id VARCHAR NOT NULL,
    scope VARCHAR NOT NULL CHECK (scope IN ('slice', 'patient')),
    sensitivity DOUBLE,
    specificity DOUBLE,
    precision DOUBLE,
    f1 DOUBLE,
    accuracy DOUBLE,
    auc DOUBLE,
    tp INTEGER,
    fp INTEGER,
    tn INTEGER,
    fn INTEGER,
    n INTEGER,
{_ci_columns()},
    ci_method VARCHAR,
    brier DOUBLE,
    ece DOUBLE,
    written_at TIMESTAMP NOT NULL,
    PRIMARY KEY (grid_id, scope)
)""")
    con.execute("DROP VIEW run_summary")
    con.execute("DROP VIEW vote_vs_baselines")
    con.execute("""
CREATE VIEW run_summary AS
WITH vote AS (
    SELECT m.run_id, m.scope, m.sensitivity, m.specificity, m.precision, m.f1,
           m.accuracy, m.auc, m.f1_lo, m.f1_hi, m.auc_lo, m.auc_hi
    FROM metrics m JOIN runs r USING (run_id)
    WHERE m.model = 'vote' AND m.split = 'test' AND m.outer_fold IS NULL
      AND r.status = 'finished'
),
val AS (
    SELECT run_id, avg(f1) AS mean_val_f1, stddev_samp(f1) AS sd_val_f1
    FROM metrics
    WHERE model = 'fold' AND scope = 'slice' AND split = 'val'
    GROUP BY run_id
),
done AS (
    SELECT run_id, count(*) AS folds_finished
    FROM folds WHERE status = 'finished' GROUP BY run_id
)
SELECT r.run_id, r.status, r.started_at, r.finished_at, r.dataset, r.backbone,
       r.strategies, r.ensemble, r.patient_rule, r.preset, r.seed, r.device,
       r.pretrained, r.grid_id, r.config_hash, r.dataset_hash, r.threshold,
       coalesce(d.folds_finished, 0) AS folds_finished,
       s.sensitivity AS slice_sensitivity, s.specificity AS slice_specificity,
       s.precision AS slice_precision, s.f1 AS slice_f1, s.accuracy AS slice_accuracy,
       s.auc AS slice_auc,
       p.sensitivity AS patient_sensitivity, p.specificity AS patient_specificity,
       p.precision AS patient_precision, p.f1 AS patient_f1, p.accuracy AS patient_accuracy,
       v.mean_val_f1, r.wall_s, r.error,
       coalesce(TRY_CAST(json_extract(r.config, '$.outer') AS INTEGER), 1) AS outer_folds,
       v.sd_val_f1, s.f1_lo AS slice_f1_lo, s.f1_hi AS slice_f1_hi,
       s.auc_lo AS slice_auc_lo, s.auc_hi AS slice_auc_hi,
       p.f1_lo AS patient_f1_lo, p.f1_hi AS patient_f1_hi
FROM runs r
LEFT JOIN vote s ON s.run_id = r.run_id AND s.scope = 'slice'
LEFT JOIN vote p ON p.run_id = r.run_id AND p.scope = 'patient'
LEFT JOIN val v ON v.run_id = r.run_id
LEFT JOIN done d ON d.run_id = r.run_id
""")
    con.execute(f"""
CREATE VIEW vote_vs_baselines AS
WITH vote AS (
    SELECT r.run_id, r.backbone AS run_backbone, r.strategies, r.preset, r.grid_id,
           r.dataset, {COMPARABLE} AS comparable,
           m.scope, m.sensitivity, m.specificity, m.precision, m.f1, m.accuracy,
           m.sensitivity_lo, m.sensitivity_hi, m.specificity_lo, m.specificity_hi,
           m.f1_lo, m.f1_hi
    FROM metrics m JOIN runs r USING (run_id)
    WHERE m.model = 'vote' AND m.split = 'test' AND m.outer_fold IS NULL
      AND r.status = 'finished'
)
SELECT v.run_id, v.run_backbone, v.strategies, v.preset, v.grid_id, v.scope,
       b.source, b.model AS baseline_model, b.backbone AS baseline_backbone, b.setting,
       b.fold AS baseline_fold, b.citation,
       v.f1 AS run_f1, b.f1 AS baseline_f1, v.f1 - b.f1 AS delta_f1,
       v.sensitivity AS run_sensitivity, b.sensitivity AS baseline_sensitivity,
       v.sensitivity - b.sensitivity AS delta_sensitivity,
       v.specificity AS run_specificity, b.specificity AS baseline_specificity,
       v.specificity - b.specificity AS delta_specificity,
       v.precision AS run_precision, b.precision AS baseline_precision,
       v.precision - b.precision AS delta_precision,
       v.accuracy AS run_accuracy, b.accuracy AS baseline_accuracy,
       v.accuracy - b.accuracy AS delta_accuracy,
       v.f1 > b.f1 AS beats_f1,
       1 + count(*) FILTER (WHERE b.f1 > v.f1)
           OVER (PARTITION BY v.run_id, v.scope) AS f1_rank,
       count(*) FILTER (WHERE b.f1 IS NOT NULL)
           OVER (PARTITION BY v.run_id, v.scope) + 1 AS f1_ranked_of,
       v.dataset, v.comparable,
       b.f1 BETWEEN v.f1_lo AND v.f1_hi AS baseline_f1_in_ci,
       b.sensitivity BETWEEN v.sensitivity_lo AND v.sensitivity_hi
           AS baseline_sensitivity_in_ci,
       b.specificity BETWEEN v.specificity_lo AND v.specificity_hi
           AS baseline_specificity_in_ci
FROM vote v
JOIN baselines b ON b.scope = v.scope AND b.split = 'test'
""")
    # two finished runs on the same data, patient by patient, for paired analyses in SQL
    # (the discordant pairs of McNemar's test, say); `ichbench compare A B` adds the
    # bootstrap and DeLong, which SQL cannot
    con.execute("""
CREATE VIEW paired_patients AS
WITH decided AS (
    SELECT d.run_id, r.dataset_hash, d.patient_id, d.label, d.score, d.decision
    FROM patient_decisions d JOIN runs r USING (run_id)
    WHERE d.fold IS NULL AND d.outer_fold IS NULL AND d.split = 'test'
      AND r.status = 'finished'
)
SELECT a.run_id AS run_a, b.run_id AS run_b, a.patient_id, a.label,
       a.score AS score_a, b.score AS score_b,
       a.decision AS decision_a, b.decision AS decision_b,
       a.decision = (a.label = 1) AS correct_a, b.decision = (b.label = 1) AS correct_b
FROM decided a
JOIN decided b ON a.dataset_hash = b.dataset_hash AND a.patient_id = b.patient_id
    AND a.run_id <> b.run_id
""")


# What the label columns hold on runs recorded before them: no name, no tags, no note.
# Also how a reader sees an older store it must not upgrade.
LABELS_OF_OLDER_ROWS = {"name": "NULL", "tags": "[]", "note": "NULL"}


def m007_run_labels(con: duckdb.DuckDBPyConnection) -> None:
    """What a user calls a run, so that it can be found, filtered and tidied up again: a
    name, tags and a note. They label a run and are not settings of it, so they are no
    part of its configuration or its hash. `run_summary` carries them too, so that SQL
    over it can filter by them."""
    con.execute("ALTER TABLE runs ADD COLUMN name VARCHAR")
    con.execute("ALTER TABLE runs ADD COLUMN tags VARCHAR[]")
    con.execute(f"UPDATE runs SET tags = {LABELS_OF_OLDER_ROWS['tags']}")
    con.execute("ALTER TABLE runs ADD COLUMN note VARCHAR")
    con.execute("DROP VIEW run_summary")
    con.execute("""
CREATE VIEW run_summary AS
WITH vote AS (
    SELECT m.run_id, m.scope, m.sensitivity, m.specificity, m.precision, m.f1,
           m.accuracy, m.auc, m.f1_lo, m.f1_hi, m.auc_lo, m.auc_hi
    FROM metrics m JOIN runs r USING (run_id)
    WHERE m.model = 'vote' AND m.split = 'test' AND m.outer_fold IS NULL
      AND r.status = 'finished'
),
val AS (
    SELECT run_id, avg(f1) AS mean_val_f1, stddev_samp(f1) AS sd_val_f1
    FROM metrics
    WHERE model = 'fold' AND scope = 'slice' AND split = 'val'
    GROUP BY run_id
),
done AS (
    SELECT run_id, count(*) AS folds_finished
    FROM folds WHERE status = 'finished' GROUP BY run_id
)
SELECT r.run_id, r.status, r.started_at, r.finished_at, r.dataset, r.backbone,
       r.strategies, r.ensemble, r.patient_rule, r.preset, r.seed, r.device,
       r.pretrained, r.grid_id, r.config_hash, r.dataset_hash, r.threshold,
       coalesce(d.folds_finished, 0) AS folds_finished,
       s.sensitivity AS slice_sensitivity, s.specificity AS slice_specificity,
       s.precision AS slice_precision, s.f1 AS slice_f1, s.accuracy AS slice_accuracy,
       s.auc AS slice_auc,
       p.sensitivity AS patient_sensitivity, p.specificity AS patient_specificity,
       p.precision AS patient_precision, p.f1 AS patient_f1, p.accuracy AS patient_accuracy,
       v.mean_val_f1, r.wall_s, r.error,
       coalesce(TRY_CAST(json_extract(r.config, '$.outer') AS INTEGER), 1) AS outer_folds,
       v.sd_val_f1, s.f1_lo AS slice_f1_lo, s.f1_hi AS slice_f1_hi,
       s.auc_lo AS slice_auc_lo, s.auc_hi AS slice_auc_hi,
       p.f1_lo AS patient_f1_lo, p.f1_hi AS patient_f1_hi,
       r.name, r.tags, r.note
FROM runs r
LEFT JOIN vote s ON s.run_id = r.run_id AND s.scope = 'slice'
LEFT JOIN vote p ON p.run_id = r.run_id AND p.scope = 'patient'
LEFT JOIN val v ON v.run_id = r.run_id
LEFT JOIN done d ON d.run_id = r.run_id
""")


def m008_evaluations(con: duckdb.DuckDBPyConnection) -> None:
    """External validation: a finished run's fold models, vote and patient rule applied to
    another dataset (`ichbench evaluate`). An evaluation belongs to its run (every table
    carries `run_id`, so removing the run removes its evaluations) and is keyed by its own
    id, since one run may be evaluated on many datasets, or on one dataset twice. A dataset
    may have patient labels only (CQ500's reads): `slice_labels` says so, its slices'
    labels are NULL and it has no slice-level metrics."""
    con.execute("""
CREATE TABLE evaluations (
    evaluation_id VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    dataset_hash VARCHAR,
    source VARCHAR,
    created_at TIMESTAMP NOT NULL,
    patients INTEGER NOT NULL,
    slices INTEGER NOT NULL,
    slice_labels BOOLEAN NOT NULL,
    threshold DOUBLE,
    preprocessing JSON,
    device VARCHAR,
    wall_s DOUBLE,
    ichbench_version VARCHAR
)""")
    con.execute(f"""
CREATE TABLE evaluation_metrics (
    evaluation_id VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    scope VARCHAR NOT NULL CHECK (scope IN ('slice', 'patient')),
    threshold DOUBLE,
    sensitivity DOUBLE,
    specificity DOUBLE,
    precision DOUBLE,
    f1 DOUBLE,
    accuracy DOUBLE,
    auc DOUBLE,
    tp INTEGER,
    fp INTEGER,
    tn INTEGER,
    fn INTEGER,
    n INTEGER,
{_ci_columns()},
    ci_method VARCHAR,
    brier DOUBLE,
    ece DOUBLE,
    PRIMARY KEY (evaluation_id, scope)
)""")
    con.execute("""
CREATE TABLE evaluation_predictions (
    evaluation_id VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    patient_id INTEGER NOT NULL,
    slice INTEGER NOT NULL,
    label INTEGER CHECK (label IN (0, 1)),
    prob DOUBLE,
    decision BOOLEAN NOT NULL,
    PRIMARY KEY (evaluation_id, patient_id, slice)
)""")
    con.execute("""
CREATE TABLE evaluation_patients (
    evaluation_id VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    patient_id INTEGER NOT NULL,
    label INTEGER NOT NULL CHECK (label IN (0, 1)),
    score DOUBLE,
    decision BOOLEAN NOT NULL,
    PRIMARY KEY (evaluation_id, patient_id)
)""")


def typed_spec(spec: str) -> str:
    """A class weight in the spelling of the command line: `weight:ich,4` -> `ich:4`;
    anything else as it is."""
    name, _, args = spec.partition(":")
    cls, comma, value = args.partition(",")
    return f"{cls}:{value}" if name == "weight" and comma and cls and value else spec


def m009_typed_strategies(con: duckdb.DuckDBPyConnection) -> None:
    """Class weights recorded as the user types them (`--weight ich:4` is `ich:4`, not the
    registry's `weight:ich,4`), so that the command line's spelling finds older runs in
    SQL too. Rewritten in Python, row by row: no SQL lambda reads alike in every DuckDB
    version this supports."""
    rows = con.execute("SELECT run_id, strategies FROM runs").fetchall()
    for run_id, strategies in rows:
        typed = [typed_spec(s) for s in strategies or []]
        if typed != list(strategies or []):
            con.execute("UPDATE runs SET strategies = ? WHERE run_id = ?", [typed, run_id])


MIGRATIONS: list[Migration] = [
    ("m001_initial_tables", m001_initial_tables),
    ("m002_seed_baselines", m002_seed_baselines),
    ("m003_views", m003_views),
    ("m004_owner_and_compiled", m004_owner_and_compiled),
    ("m005_patient_decisions_notes_plugins", m005_patient_decisions_notes_plugins),
    ("m006_outer_folds", m006_outer_folds),
    ("m007_run_labels", m007_run_labels),
    ("m008_evaluations", m008_evaluations),
    ("m009_typed_strategies", m009_typed_strategies),
]


def _ensure_ledger(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, "
        "applied_at TIMESTAMP NOT NULL)"
    )


def applied(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names already recorded; empty for a store that predates the ledger (a fresh file)."""
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main' "
        "AND table_name = '_migrations'"
    ).fetchone()
    if not exists or not exists[0]:
        return set()
    return {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}


def pending(con: duckdb.DuckDBPyConnection) -> list[str]:
    done = applied(con)
    return [name for name, _ in MIGRATIONS if name not in done]


def unknown(done: set[str]) -> list[str]:
    """Recorded names this version does not have: a newer ichbench upgraded the store."""
    known = {name for name, _ in MIGRATIONS}
    return sorted(done - known)


def apply_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply every pending migration, each in its own transaction; returns their names."""
    _ensure_ledger(con)
    done = applied(con)
    ran: list[str] = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        con.begin()
        try:
            fn(con)
            con.execute(
                "INSERT INTO _migrations VALUES (?, ?)",
                [name, datetime.now(timezone.utc).replace(tzinfo=None)],
            )
            con.commit()
        except BaseException:
            con.rollback()
            raise
        ran.append(name)
    return ran
