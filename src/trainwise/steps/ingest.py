"""Step 2A, ingest: read every file or row, validate it, hash its content, quarantine what is bad.

Everything found is logged before the step decides whether the data is good enough, so a failed
ingest still leaves its manifest, quarantine list and report in the run for the user to read.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd

from trainwise.config import ProjectConfig, TabularSource
from trainwise.data.manifest import OK, QUARANTINED, add_duplicate_groups, data_digest, decoder_tag, duplicate_report, scan_images
from trainwise.data.records import POOL, TRAIN, VAL, list_images
from trainwise.data.table_quality import ERROR, WARNING, Finding, table_findings
from trainwise.data.tables import load_source_table, read_table, table_digest
from trainwise.errors import DataError
from trainwise.paths import trainwise_home
from trainwise.provenance import short_hash
from trainwise.steps import artifacts
from trainwise.steps.artifacts import TAG_DIGEST
from trainwise.steps.runner import StepContext
from trainwise.tracking import StepRun

log = logging.getLogger(__name__)



def run(cfg: ProjectConfig, run: StepRun, ctx: StepContext) -> dict[str, Any]:
    return _ingest_images(cfg, run) if cfg.task.is_image else _ingest_table(cfg, run)


# -- images -----------------------------------------------------------------------------------------


def _ingest_images(cfg: ProjectConfig, run: StepRun) -> dict[str, Any]:
    listing = list_images(cfg)
    # The input size decides the reduced decode (and so the statistics and signatures): one hash cache per size.
    key = short_hash([str(listing.root), cfg.image.channels, cfg.data.max_image_pixels, decoder_tag(cfg.image.size)])
    manifest = scan_images(
        listing,
        channels=cfg.image.channels,
        max_pixels=cfg.data.max_image_pixels,
        cache_file=trainwise_home() / "cache" / "hashes" / f"{key}.parquet",
        size=cfg.image.size,  # its pixels at this size are kept for prepare's decoded cache
    )
    manifest = add_duplicate_groups(manifest, cfg.data.near_duplicate_similarity)
    usable = manifest[manifest["status"] == OK]
    bad = manifest[manifest["status"] == QUARANTINED]
    duplicates = duplicate_report(manifest)
    digest = data_digest(usable[["path", "sha256", "label", "split"]].itertuples(index=False))
    report = _image_report(manifest, duplicates, cfg)

    run.log_frame(manifest, artifacts.MANIFEST)
    run.log_frame(bad[["path", "label", "reason", "detail"]], artifacts.QUARANTINE)
    run.log_frame(duplicates, artifacts.DUPLICATES)
    run.log_dict(report, artifacts.QUALITY)
    run.set_description(_report_markdown(cfg, report))
    run.set_tags({TAG_DIGEST: digest})
    run.log_metrics({k: v for k, v in report["counts"].items() if isinstance(v, int | float)})
    run.log_dataset(
        name=cfg.name,
        digest=digest,
        source=str(listing.root),
        schema={"columns": list(manifest.columns)},
        profile={"items": len(usable), "classes": len(report["classes"]), "quarantined": len(bad)},
    )

    share = report["counts"]["bad_fraction"]
    if share > cfg.data.max_bad_fraction:
        first = ", ".join(f"{p} ({r})" for p, r in bad[["path", "reason"]].head(5).itertuples(index=False))
        raise DataError(
            f"{len(bad)} of {len(manifest)} files ({share:.1%}) are unusable, over data.max_bad_fraction = "
            f"{cfg.data.max_bad_fraction:.1%}. First: {first}. Every one is listed with its reason in quarantine.csv of "
            f"run {run.url}. Fix or remove them, or raise data.max_bad_fraction."
        )
    # per training folder: a class whose training images were all quarantined cannot be learnt, even if
    # a provided validation folder still holds some of it
    emptied = sorted(set(listing.classes) - set(usable.loc[usable["split"] == TRAIN, "label"]))
    if emptied:
        raise DataError(f"every training image of class {', '.join(emptied)} was quarantined; see quarantine.csv of run {run.url}")
    log.info("%s: %d usable images, %d quarantined, digest %s", cfg.name, len(usable), len(bad), digest)
    return {"digest": digest, "items": len(usable)}


def _image_report(manifest: pd.DataFrame, duplicates: pd.DataFrame, cfg: ProjectConfig) -> dict[str, Any]:
    usable = manifest[manifest["status"] == OK]
    train = usable[usable["split"].isin(POOL)]
    bad = manifest[manifest["status"] == QUARANTINED]
    counts = {
        "files": len(manifest),
        "usable": len(usable),
        "quarantined": len(bad),
        "bad_fraction": len(bad) / max(len(manifest), 1),
        "train_items": int((usable["split"] == TRAIN).sum()),
        "val_items": int((usable["split"] == VAL).sum()),  # a provided validation folder
        "test_items": int((~usable["split"].isin(POOL)).sum()),
        "exact_duplicate_groups": int((duplicates["kind"] == "exact").sum()),
        "near_duplicate_groups": int((duplicates["kind"] == "near").sum()),
        "conflicting_label_groups": int(duplicates["conflicting_labels"].sum()),
        "items_in_duplicate_groups": int((usable["exact_dup"] | usable["near_dup"]).sum()),
    }
    return {
        "counts": counts,
        "threshold": {"max_bad_fraction": cfg.data.max_bad_fraction},
        "quarantine_reasons": bad["reason"].value_counts().to_dict(),
        "classes": train["label"].value_counts().sort_index().to_dict(),
        "modes": usable["mode"].value_counts().to_dict(),
        "formats": usable["format"].value_counts().to_dict(),
        "sizes": {
            "width": [int(usable["width"].min()), int(usable["width"].max())] if len(usable) else [],
            "height": [int(usable["height"].min()), int(usable["height"].max())] if len(usable) else [],
        },
    }


def _report_markdown(cfg: ProjectConfig, report: dict[str, Any]) -> str:
    c = report["counts"]
    lines = [
        f"# {cfg.name}: ingest quality report",
        "",
        f"{c['usable']:,} usable of {c['files']:,} files; {c['quarantined']:,} quarantined ({c['bad_fraction']:.2%}, "
        f"limit {cfg.data.max_bad_fraction:.1%}).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| training items | {c['train_items']:,} in {len(report['classes'])} classes |",
        f"| test items | {c['test_items']:,} |",
        f"| exact duplicate groups | {c['exact_duplicate_groups']} |",
        f"| near duplicate groups | {c['near_duplicate_groups']} |",
        f"| groups with conflicting labels | {c['conflicting_label_groups']} |",
        f"| image modes | {', '.join(f'{k}: {v}' for k, v in report['modes'].items())} |",
    ]
    if report["quarantine_reasons"]:
        lines += ["", "## Quarantined", "", "| reason | files |", "|---|---:|"]
        lines += [f"| {reason} | {n} |" for reason, n in report["quarantine_reasons"].items()]
        lines += ["", "Each file is listed with its reason in `quarantine.csv`."]
    return "\n".join(lines)


# -- tables -----------------------------------------------------------------------------------------


def _ingest_table(cfg: ProjectConfig, run: StepRun) -> dict[str, Any]:
    source = cfg.data.source
    assert isinstance(source, TabularSource)
    frame, location = load_source_table(source)
    target = cfg.task.target
    if target not in frame.columns:
        raise DataError(f"{location}: no target column {target!r}; columns: {', '.join(map(str, frame.columns))}. Set task.target.")
    findings = table_findings(frame, target, classification=cfg.task.is_classification)
    test = read_table(source.test_path) if source.test_path else None
    if test is not None:
        missing = [c for c in frame.columns if c != target and c not in test.columns]
        if missing:
            findings.append(Finding("test_columns", ERROR, None, f"{source.test_path} lacks columns {', '.join(missing)}"))
    digest = table_digest(frame)
    schema = {
        "columns": {str(c): str(t) for c, t in frame.dtypes.items()},
        "missing": {str(c): int(n) for c, n in frame.isna().sum().items()},
        "rows": len(frame),
        "target": target,
    }
    report = {"schema": schema, "findings": [f.to_dict() for f in findings], "location": location}

    run.log_frame(frame, artifacts.TABLE)
    if test is not None:
        run.log_frame(test, artifacts.TEST_TABLE)
    run.log_dict(report, artifacts.QUALITY)
    run.log_frame(pd.DataFrame([f.to_dict() for f in findings], columns=["check", "severity", "column", "detail"]), "findings.csv")
    run.set_tags({TAG_DIGEST: digest})
    run.log_metrics({"rows": len(frame), "columns": frame.shape[1], "findings": len(findings), "duplicate_rows": int(frame.duplicated().sum())})
    run.log_dataset(name=cfg.name, digest=digest, source=location, schema=schema["columns"], profile={"rows": len(frame)})
    run.set_description(_table_markdown(cfg, report))
    unlabelled = frame[frame[target].isna()]
    if len(unlabelled):  # left out of every split: say so where the user looks, not only in an artifact
        run.log_frame(unlabelled.assign(trainwise_row=unlabelled.index), "rows_without_target.csv")  # which rows
        log.warning(
            "%s: %d of %d rows have no %r and are left out; they are listed in rows_without_target.csv of the ingest run %s",
            location, len(unlabelled), len(frame), target, run.url,
        )  # fmt: skip
    for finding in findings:
        if finding.severity == WARNING and finding.check != "missing_target":
            log.warning("%s: %s%s", location, f"{finding.column}: " if finding.column else "", finding.detail)

    errors = [f for f in findings if f.severity == ERROR]
    if errors:
        raise DataError("; ".join(f"{f.column}: {f.detail}" if f.column else f.detail for f in errors) + f" ({location})")
    return {"digest": digest, "rows": len(frame)}


def _table_markdown(cfg: ProjectConfig, report: dict[str, Any]) -> str:
    schema = report["schema"]
    lines = [f"# {cfg.name}: ingest quality report", "", f"{schema['rows']:,} rows, {len(schema['columns'])} columns from {report['location']}.", ""]
    if report["findings"]:
        lines += ["| check | severity | column | detail |", "|---|---|---|---|"]
        lines += [f"| {f['check']} | {f['severity']} | {f['column'] or ''} | {f['detail']} |" for f in report["findings"]]
    else:
        lines.append("No problems found.")
    return "\n".join(lines) + "\n\n```json\n" + json.dumps(schema["columns"], indent=1) + "\n```"
