"""The artifact names steps hand to each other (DESIGN.md: steps talk only through run artifacts).

Producer -> consumers. A step finds its upstream run by tags, then reads these paths from it.
"""

# ingest -> explore, sample, prepare
MANIFEST = "manifest.parquet"  # images: one row per file (id, path, label, split, hashes, size, status, dup_group)
TABLE = "table.parquet"  # tables: the training rows as read
TEST_TABLE = "test_table.parquet"  # tables: the provided test rows, if any
QUARANTINE = "quarantine.csv"  # every unusable file with its reason
DUPLICATES = "duplicates.csv"  # one row per exact/near duplicate group
LEAKED_GROUPS = "leaked_groups.csv"  # prepare: every item of a duplicate group that spans splits, with its split
QUALITY = "quality_report.json"  # counts, findings, thresholds

# sample -> prepare, check
SAMPLE = "sample.parquet"  # the sample's manifest rows (images) or table rows, with their ids
REPRESENTATIVENESS = "representativeness.json"  # sample-vs-full checks
SAMPLE_DRIFT = "checks/sample_drift.csv"  # for people: KS statistic, p and q per compared column, worst first

# prepare -> check, train, tune
SPLITS = "splits.parquet"  # id -> train/val/test, for the full data and the sample
CLASS_SIZES = "class_sizes.json"  # the smallest class per training split, a check row carried into check
PROPERTY_CHECKS = "property_checks.json"  # test-vs-training drift and shortcut rows, carried into check
TEST_DRIFT = "checks/test_drift.csv"  # for people: KS statistic, p and q per property or feature, worst first
PROPERTY_LABEL_AUC = "checks/property_label_auc.csv"  # for people: class x image property one-vs-rest AUC
NORMALIZATION = "normalization.json"  # per-channel mean/std from the training split
PREPROCESSING = "preprocessing.json"  # what the served model must do to raw inputs
CACHE_INFO = "cache.json"  # the decoded cache's key, size, channels and data digest (found or rebuilt by key)

# check, train -> the findings report (report.py)
CHECKS = "checks.json"  # check: every pipeline-check row, with "passed"
LABEL_ISSUES = "label_issues.csv"  # check: suspected label errors of the sample, worst first
SAMPLE_VS_FULL = "sample_vs_full.json"  # train: the sample-vs-full rows
REPORT = "report.html"  # main: every step's findings on one page

# tags steps read from each other's runs
TAG_DIGEST = "trainwise.data_digest"  # ingest: the content digest of the usable data
TAG_CHECKS = "trainwise.checks"  # sample, prepare, check: "N/M passed"
