"""The X-AlpacaEval leaderboard, rebuilt from evaluation folders.

Sources (``harness leaderboard SOURCE ...``; shell-style globs allowed):

- a run folder (``runs/<run>``): one model per finished evaluation ``iter_ref/eval`` (pi_ref), ``iter_0/eval``
  (pi_0), ``iter_<k>/eval`` (pi_k), in that order; the run's strategy from its ``config.yaml``;
- a ``harness eval`` folder (``runs/eval-<name>``): one model, whose origin (a checkpoint, given
  ``model_outputs.json`` files, an OpenAI-compatible endpoint) its ``run.json`` records;
- ``published``: the paper's Table 2 (METHOD.md section 7), shown as not re-measured.

Each (model, language) is one row: WR and LC with their standard errors, n, the on-target language rate and what
the numbers depend on. Two numbers are comparable only when they were measured the same way; the comparability key
is a short hash of exactly that (:data:`KEY_FIELDS`): the judge's identity, the reference outputs (their content, not
a path), the instruction ids, the LC source with its difficulty / gamed-rows inputs, and the decoding settings that
produced the model's outputs. Models whose keys differ on a shared language are never put in one table: the
leaderboard is split into sections, and the note says which field differs.
"""

from __future__ import annotations

import csv
import glob
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from harness.errors import HarnessError
from harness.io import atomic_write_text, read_json, stable_hash

PUBLISHED_CSV = Path(__file__).resolve().parent.parent / "presets" / "data" / "published_icr_table2.csv"
PUBLISHED_SOURCE = "Yang et al. 2024, ICR paper, Table 2 (METHOD.md section 7); not re-measured here"
KEY_FIELDS = ("judge", "instructions", "reference", "lc", "decoding")  # first difference named
METRICS = ("length_controlled_winrate", "win_rate")  # the paper's order: LC then WR
SHORT = {"length_controlled_winrate": "LC", "win_rate": "WR"}
SE = {"length_controlled_winrate": "lc_standard_error", "win_rate": "standard_error"}
# the CSV's columns, one row per model x language
ROW_COLUMNS = ["model", "run", "iteration", "strategy", "origin", "lang", "win_rate", "standard_error",
               "length_controlled_winrate", "lc_standard_error", "n_total", "n_wins", "n_wins_base", "n_draws",
               "discrete_win_rate", "avg_length", "on_target_rate", "judge", "reference", "lc_source",
               "instructions", "lc", "decoding", "key", "measured", "path"]
# AlpacaEval's leaderboard CSV columns (index: the model name)
ALPACA_EVAL_COLUMNS = ["win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total",
                       "discrete_win_rate", "mode", "avg_length", "length_controlled_winrate", "lc_standard_error"]


@dataclass
class Model:
    """One evaluated model: a folder of ``<lang>/metrics.json`` + ``annotations.json`` (or published numbers)."""

    name: str  # unique in a leaderboard, e.g. "demo/pi_1"
    label: str  # what the table shows: "pi_1", or the model's own name
    run: str
    iteration: str  # pi_ref, pi_0, pi_1, ... ("" outside a run)
    strategy: str
    origin: str  # run | checkpoint | outputs | endpoint | published
    path: Path | None
    decoding: str
    rows: dict[str, dict] = field(default_factory=dict)  # lang -> row (see ROW_COLUMNS)
    eval_hash: str = ""  # the evaluation stage's hash: equal hashes are the same evaluation of the same model
    shared_with: list[str] = field(default_factory=list)  # other runs with this very evaluation (shown once)

    @property
    def group(self) -> str:
        if self.origin == "published":
            return self.run
        if self.shared_with:
            return f"shared by {', '.join([self.run, *self.shared_with])}"
        return f"{self.run} ({self.strategy})" if self.strategy else self.run


def decoding_text(ec: dict | None) -> str:
    """The decoding settings that produced a model's outputs, as one comparable string."""
    if not ec:
        return "unknown"
    return " ".join(f"{k}={ec.get(k)}" for k in ("temperature", "top_p", "max_tokens", "seed"))


# -- reading -------------------------------------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise HarnessError(f"cannot read the run's config: {e}".splitlines()[0], path) from None


def _lang_row(model: Model, lang_dir: Path) -> dict:
    mpath, apath = lang_dir / "metrics.json", lang_dir / "annotations.json"
    for p in (mpath, apath):
        if not p.is_file():
            raise HarnessError(f"missing {p.name} (every evaluated language has metrics.json and annotations.json)",
                               lang_dir)
    m = read_json(mpath)
    if not isinstance(m, dict) or "win_rate" not in m:
        raise HarnessError("not a harness metrics.json (no 'win_rate')", mpath)
    ann = read_json(apath)
    if not isinstance(ann, list):
        raise HarnessError("not an annotations list", apath)
    try:
        refs = sorted((int(a["index"]), a["output_1"]) for a in ann)
    except (KeyError, TypeError, ValueError) as e:
        raise HarnessError(f"annotation without a valid index/output_1 ({e})", apath) from None
    ids = [i for i, _ in refs]
    judge = m.get("judge") or {}
    lc_inputs = m.get("lc_inputs") or m.get("lc_origin") or ""
    row = {"model": model.name, "run": model.run, "iteration": model.iteration, "strategy": model.strategy,
           "origin": model.origin, "lang": m.get("language", lang_dir.name),
           **{k: m.get(k) for k in ("win_rate", "standard_error", "length_controlled_winrate", "lc_standard_error",
                                    "n_total", "n_wins", "n_wins_base", "n_draws", "discrete_win_rate", "avg_length",
                                    "on_target_rate", "lc_source")},
           "judge": json.dumps(judge, sort_keys=True), "reference": f"{m.get('reference')} #{stable_hash(refs, 8)}",
           "instructions": f"{len(ids)} ids #{stable_hash(ids, 8)}", "lc": f"{m.get('lc_source')} ({lc_inputs})",
           "decoding": model.decoding, "measured": True, "path": str(lang_dir)}
    row["key"] = stable_hash({k: row[k] for k in KEY_FIELDS}, 10)
    return row


def _eval_model(model: Model, eval_dir: Path) -> Model:
    summary = read_json(eval_dir / "metrics.json")
    langs = summary.get("languages") if isinstance(summary, dict) else None
    if not isinstance(langs, list):
        raise HarnessError("not a harness evaluation summary (no 'languages')", eval_dir / "metrics.json")
    for lang in langs:
        model.rows[lang] = _lang_row(model, eval_dir / lang)
    return model


def _run_models(path: Path) -> list[Model]:
    cfg = _read_yaml(path / "config.yaml") if (path / "config.yaml").is_file() else {}
    run = str(cfg.get("run_name") or path.name)
    strategy = str(cfg.get("strategy") or "")
    decoding = decoding_text(cfg.get("eval"))
    iters = []
    for d in path.glob("iter_*"):
        tag = d.name[len("iter_"):]
        if tag == "ref":
            iters.append((-1, "pi_ref", d))
        elif tag.isdigit():
            iters.append((int(tag), f"pi_{int(tag)}", d))
    models = []
    for _, label, d in sorted(iters):
        ev = d / "eval"
        if not (ev / "_done.json").is_file():  # an evaluation in progress or never run: not a result yet
            continue
        m = Model(f"{run}/{label}", label, run, label, strategy, "run", ev, decoding,
                  eval_hash=str(read_json(ev / "_done.json").get("hash", "")))
        models.append(_eval_model(m, ev))
    return models


def _eval_folder_model(path: Path, eval_dir: Path) -> Model:
    info = read_json(path / "run.json") if (path / "run.json").is_file() else {}
    src = info.get("source") or {}
    origin = src.get("kind", "checkpoint")
    name = (info.get("model") or {}).get("name") or src.get("name") or path.name
    decoding = src.get("decoding") or decoding_text((info.get("config") or {}).get("eval"))
    m = Model(str(name), str(name), path.name, "", "", origin, eval_dir, decoding)
    return _eval_model(m, eval_dir)


def models_in(path: str | Path) -> list[Model]:
    """The evaluated models of one folder: a run, a ``harness eval`` folder, or an evaluation folder itself."""
    path = Path(path)
    if not path.exists():
        raise HarnessError("no such run or evaluation folder", path)
    if not path.is_dir():
        raise HarnessError("not a folder (give a run folder such as runs/demo, or a harness eval folder)", path)
    if any(path.glob("iter_*")):
        models = _run_models(path)
        if not models:
            raise HarnessError("run has no finished evaluation (iter_*/eval/_done.json); run it with "
                               "eval.enabled: true", path)
        return models
    if (path / "eval" / "metrics.json").is_file():
        return [_eval_folder_model(path, path / "eval")]
    if (path / "metrics.json").is_file():
        return [_eval_folder_model(path.parent, path)]
    raise HarnessError("no evaluation results here (expected iter_*/eval/ of a run, or eval/ of harness eval)", path)


def published_models(path: str | Path = PUBLISHED_CSV) -> list[Model]:
    """The paper's Table 2 rows: LC and WR per language, no standard errors (not published), not re-measured."""
    models: dict[str, Model] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh):
            name = f"{r['group']}: {r['model']}"
            m = models.setdefault(name, Model(name, r["model"], "published: " + r["group"], "", "", "published",
                                              None, "as published"))
            row = {c: None for c in ROW_COLUMNS}
            row.update({"model": name, "run": m.run, "origin": "published", "lang": r["lang"],
                        "win_rate": float(r["win_rate"]), "length_controlled_winrate": float(r[METRICS[0]]),
                        "n_total": 805, "judge": "weighted_alpaca_eval_gpt4_turbo_multilingual (gpt-4-1106-preview)",
                        "reference": "gpt-4-turbo-2024-04-09", "instructions": "805 ids (all)",
                        "lc": "official (df_gamed.csv)", "lc_source": "official", "decoding": "as published",
                        "measured": False, "path": PUBLISHED_SOURCE})
            row["key"] = "published"
            m.rows[r["lang"]] = row
    return list(models.values())


def find_models(sources: Iterable[str]) -> list[Model]:
    """Models from run folders, eval folders, globs of them, and ``published``; names made unique."""
    models: list[Model] = []
    for s in sources:
        if s == "published":
            models += published_models()
            continue
        paths = sorted(glob.glob(s)) if glob.has_magic(s) else [s]
        if not paths:
            raise HarnessError(f"no folder matches '{s}'")
        dirs = [p for p in paths if Path(p).is_dir()] if glob.has_magic(s) else paths
        for p in dirs:
            models += models_in(p)
    if not models:
        raise HarnessError("no models to put in a leaderboard")
    first: dict[str, Model] = {}  # a comparison's runs share pi_ref's and pi_0's evaluations: show each once
    unique = []
    for m in models:
        if m.eval_hash and m.eval_hash in first:
            first[m.eval_hash].shared_with.append(m.run)
            continue
        if m.eval_hash:
            first[m.eval_hash] = m
        unique.append(m)
    models = unique
    seen: dict[str, int] = {}
    for m in models:  # two runs of the same name in different folders: name them apart
        n = seen.get(m.name, 0)
        seen[m.name] = n + 1
        if n:
            m.name = f"{m.name} ({m.path.parents[1] if m.path else n + 1})"
            for r in m.rows.values():
                r["model"] = m.name
    return models


# -- comparability -------------------------------------------------------------------------------------------------
def key_difference(a: dict, b: dict) -> str:
    """The first field in which two rows' keys differ, with both values: why they are not comparable."""
    for f in KEY_FIELDS:
        if a.get(f) != b.get(f):
            return f"{f} differs: {a.get(f)!r} ({a['model']}) vs {b.get(f)!r} ({b['model']})"
    return ""


def incomparable(a: Model, b: Model) -> str:
    """'' when the two models' numbers are comparable on every language both have, else why not."""
    if a.origin == "published" or b.origin == "published":
        return "" if a.origin == b.origin else "published numbers are not re-measured: never mixed with local ones"
    for lang in a.rows.keys() & b.rows.keys():
        ra, rb = a.rows[lang], b.rows[lang]
        if ra["key"] != rb["key"]:
            return f"{lang}: {key_difference(ra, rb)}"
    return ""


@dataclass
class Section:
    models: list[Model]
    languages: list[str]
    note: str = ""  # why this section is apart from the previous ones

    def fields(self) -> dict[str, str]:
        """The key fields every row of this section shares (per language where they differ by language)."""
        out = {}
        for f in KEY_FIELDS:
            vals = {lang: m.rows[lang][f] for m in self.models for lang in self.languages if lang in m.rows}
            distinct = sorted(set(vals.values()), key=str)
            out[f] = str(distinct[0]) if len(distinct) == 1 else "; ".join(f"{k}: {v}" for k, v in vals.items())
        return out


def split_sections(models: list[Model]) -> list[Section]:
    """Models grouped so that all numbers in a section are comparable (first fit, in the given order)."""
    groups: list[list[Model]] = []
    notes: list[str] = []
    for m in models:
        reasons = []
        for g in groups:
            why = next((w for w in (incomparable(m, o) for o in g) if w), "")
            if not why:
                g.append(m)
                break
            reasons.append(why)
        else:
            groups.append([m])
            notes.append(f"{m.name} is not comparable with the section above ({reasons[-1]})" if reasons else "")
    sections = []
    for g, note in zip(groups, notes):
        langs: list[str] = []
        for m in g:
            langs += [lang for lang in m.rows if lang not in langs]
        sections.append(Section(g, langs, note))
    return sections


# -- the wide table ------------------------------------------------------------------------------------------------
def average(model: Model, languages: list[str], metric: str) -> float | None:
    """Mean over ``languages`` (as the paper's Avg), or None unless the model has a value for every one."""
    vals = [model.rows[lang].get(metric) if lang in model.rows else None for lang in languages]
    if not vals or any(v is None for v in vals):
        return None
    return sum(vals) / len(vals)


def columns(section: Section) -> list[tuple[str, str | None, str]]:
    """(header, language or None for the average, metric) of the wide table."""
    cols = [(f"{lang} {SHORT[m]}", lang, m) for lang in section.languages for m in METRICS]
    cols += [(f"Avg {SHORT[m]}", None, m) for m in METRICS]
    cols.append(("On-target", None, "on_target_rate"))
    return cols


def cell_value(model: Model, section: Section, lang: str | None, metric: str) -> float | None:
    if lang is not None:
        return model.rows[lang].get(metric) if lang in model.rows else None
    return average(model, section.languages, metric)


def ranks(section: Section) -> dict[tuple[str, str], int]:
    """(model name, header) -> 1 for the best, 2 for the second best value of that column (ties share a rank)."""
    out = {}
    for header, lang, metric in columns(section):
        vals = sorted({round(v, 9) for m in section.models
                       if (v := cell_value(m, section, lang, metric)) is not None}, reverse=True)
        for m in section.models:
            v = cell_value(m, section, lang, metric)
            if v is not None and round(v, 9) in vals[:2]:
                out[(m.name, header)] = vals.index(round(v, 9)) + 1
    return out


def fmt(value: float | None, se: float | None = None, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value * scale:.2f}"
    return text + (f" ± {se:.2f}" if se is not None else "")


def cell_text(model: Model, section: Section, lang: str | None, metric: str) -> str:
    v = cell_value(model, section, lang, metric)
    if metric == "on_target_rate":
        return "n/a" if v is None else f"{100 * v:.0f}%"
    se = model.rows[lang].get(SE[metric]) if lang is not None and lang in model.rows else None
    return fmt(v, se)


# -- writers -------------------------------------------------------------------------------------------------------
def to_csv(models: list[Model]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_COLUMNS, lineterminator="\n")
    w.writeheader()
    for m in models:
        for row in m.rows.values():
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in ROW_COLUMNS})
    return buf.getvalue()


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(sections: list[Section], title: str) -> str:
    out = [f"# {_md_escape(title)}", "",
           "LC / WR: AlpacaEval 2 length-controlled win rate and win rate (%, ± standard error) against the "
           "reference outputs; Avg over the section's languages; On-target: share of outputs in the instruction's "
           "language. **Bold**: best, _italic_: second best per column. Rebuilt by `harness leaderboard`; do not "
           "edit.", ""]
    for i, s in enumerate(sections, 1):
        measured = all(m.origin != "published" for m in s.models)
        out.append(f"## Section {i}{'' if measured else ': published numbers, not re-measured'}")
        out.append("")
        if s.note:
            out += [f"Apart from the section above: {_md_escape(s.note)}", ""]
        for f, v in s.fields().items():
            out.append(f"- {f}: `{_md_escape(v)}`" if measured else f"- {f}: {_md_escape(v)}")
        out.append("")
        cols = columns(s)
        rk = ranks(s)
        out.append("| Group | Model | " + " | ".join(h for h, _, _ in cols) + " |")
        out.append("|---|---|" + "---|" * len(cols))
        for m in s.models:
            cells = []
            for h, lang, metric in cols:
                t = cell_text(m, s, lang, metric)
                r = rk.get((m.name, h))
                cells.append(f"**{t}**" if r == 1 else f"_{t}_" if r == 2 else t)
            out.append(f"| {_md_escape(m.group)} | {_md_escape(m.label)} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.name,th.name{text-align:left}td.best{font-weight:bold;background:#e5f4e5}td.second{font-style:italic;background:#f4f8e9}
.fields{font-size:12px;color:#555}.fields code{background:#f6f6f6}
.published{color:#666}.note{color:#a33}
"""
# Sort a table by the clicked column: numbers by data-value, text otherwise; touches no HTML (textContent only).
HTML_SORT_SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var desc = !th.classList.contains('sorted-desc');
      table.querySelectorAll('th').forEach(function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
      th.classList.add(desc ? 'sorted-desc' : 'sorted-asc');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        var v = cell.getAttribute('data-value');
        if (v !== null && v !== '') { return [0, parseFloat(v)]; }
        if (v === '') { return [1, 0]; }
        return [0, cell.textContent];
      }
      rows.sort(function (a, b) {
        var ka = key(a), kb = key(b);
        if (ka[0] !== kb[0]) { return ka[0] - kb[0]; }
        if (ka[1] < kb[1]) { return desc ? 1 : -1; }
        if (ka[1] > kb[1]) { return desc ? -1 : 1; }
        return 0;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def section_html(s: Section, index: int, link: Callable[[Model, str], str | None] | None = None) -> str:
    """One section as a sortable table; every name and value escaped; ``link(model, lang)`` gives a cell's href."""
    e = html.escape
    measured = all(m.origin != "published" for m in s.models)
    parts = [f"<h2>Section {index}{'' if measured else ': published numbers, not re-measured'}</h2>"]
    if s.note:
        parts.append(f"<p class='note'>Apart from the section above: {e(s.note)}</p>")
    parts.append("<ul class='fields'>" + "".join(f"<li>{e(f)}: <code>{e(v)}</code></li>"
                                                  for f, v in s.fields().items()) + "</ul>")
    cols = columns(s)
    rk = ranks(s)
    head = "".join(f"<th>{e(h)}</th>" for h, _, _ in cols)
    parts.append(f"<table class='sortable{'' if measured else ' published'}' data-section='{index}'><thead><tr>"
                 f"<th class='name'>Group</th><th class='name'>Model</th>{head}</tr></thead><tbody>")
    for m in s.models:
        cells = []
        for h, lang, metric in cols:
            v = cell_value(m, s, lang, metric)
            r = rk.get((m.name, h))
            cls = " class='best'" if r == 1 else " class='second'" if r == 2 else ""
            text = e(cell_text(m, s, lang, metric))
            href = link(m, lang) if (link and lang is not None and lang in m.rows) else None
            if href:
                text = f"<a href='{e(href, quote=True)}'>{text}</a>"
            cells.append(f"<td{cls} data-value='{'' if v is None else repr(float(v))}'>{text}</td>")
        parts.append(f"<tr><td class='name'>{e(m.group)}</td><td class='name'>{e(m.label)}</td>"
                     + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "\n".join(parts)


def html_page(title: str, body: str) -> str:
    """A self-contained page: inline style and script, no external resource."""
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{HTML_STYLE}</style></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n<script>{HTML_SORT_SCRIPT}</script>\n</body></html>\n")


def to_html(sections: list[Section], title: str, link: Callable[[Model, str], str | None] | None = None) -> str:
    intro = ("<p>LC / WR: AlpacaEval 2 length-controlled win rate and win rate (%, ± standard error) against the "
             "reference outputs. Bold: best, italic: second best per column. Click a column header to sort. "
             "Rebuilt by <code>harness leaderboard</code>.</p>")
    return html_page(title, intro + "\n".join(section_html(s, i, link) for i, s in enumerate(sections, 1)))


def to_alpaca_eval(section: Section, lang: str) -> str:
    """AlpacaEval's leaderboard CSV for one language of one section (index: model name)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["", *ALPACA_EVAL_COLUMNS])
    for m in section.models:
        if lang not in m.rows:
            continue
        r = m.rows[lang]
        vals = [("community" if c == "mode" else r.get(c)) for c in ALPACA_EVAL_COLUMNS]
        w.writerow([m.name, *("" if v is None else v for v in vals)])
    return buf.getvalue()


@dataclass
class Built:
    sections: list[Section]
    files: list[Path]


def build(sources: list[str], out_dir: str | Path, name: str, alpaca_eval: bool = False,
          history: bool = True, title: str | None = None) -> Built:
    """Read the sources, write ``<out>/<name>.{csv,md,html}`` (and the AlpacaEval CSVs), append the history."""
    models = find_models(sources)
    sections = split_sections(models)
    out = Path(out_dir)
    title = f"X-AlpacaEval leaderboard: {title or name}"
    files = [atomic_write_text(out / f"{name}.csv", to_csv(models)),
             atomic_write_text(out / f"{name}.md", to_markdown(sections, title)),
             atomic_write_text(out / f"{name}.html", to_html(sections, title))]
    if alpaca_eval:
        measured = [(i, s) for i, s in enumerate(sections, 1) if all(m.origin != "published" for m in s.models)]
        for i, s in measured:
            for lang in s.languages:
                suffix = "" if len(measured) == 1 else f".section{i}"
                files.append(atomic_write_text(out / f"{name}.alpaca_eval" / f"{lang}{suffix}.csv",
                                               to_alpaca_eval(s, lang)))
    if history:
        files.append(append_history(out / "history.jsonl", name, models))
    return Built(sections, files)


# -- history -------------------------------------------------------------------------------------------------------
def append_history(path: Path, name: str, models: list[Model]) -> Path:
    """One JSON line per measured (model, language) of this build, so a model's numbers over time can be listed."""
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = [json.dumps({"time": now, "leaderboard": name, "model": m.name, "lang": lang, "key": r["key"],
                         "win_rate": r["win_rate"], "length_controlled_winrate": r["length_controlled_winrate"],
                         "standard_error": r["standard_error"], "lc_standard_error": r["lc_standard_error"],
                         "n_total": r["n_total"], "path": r["path"]}, ensure_ascii=False)
             for m in models if m.origin != "published" for lang, r in m.rows.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:  # append-only: one write per build
        fh.write("".join(line + "\n" for line in lines))
    return path


def read_history(path: str | Path, model: str | None = None) -> list[dict]:
    from harness.io import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise HarnessError("no leaderboard history yet (harness leaderboard appends to it)", path)
    return [r for _, r in iter_jsonl(path, tolerate_torn_tail=True) if model is None or model in r.get("model", "")]
