"""``harness report RUN``: the plots of one run and an HTML page with its leaderboard.

Writes ``RUN/report/`` (or ``--out``):

- ``plots/*.png`` (matplotlib): WR and LC per language across the run's models; the on-target language rate per
  model; the length-control diagnostics of each pairs stage (chosen vs rejected mean length, and alpha, per
  iteration and language); the DPO loss and reward-margin trajectories of each training stage;
- ``index.html``: the run's leaderboard (sortable; each cell links to that model's outputs in that language) and
  the plots, embedded, so that the page is one file that can be mailed or published;
- ``outputs/<model>_<lang>.html``: per instruction, the model's output next to the reference's and the judge's
  preference.

Model names and outputs are untrusted text: everything that goes into a page is HTML-escaped, and the pages' only
script sorts tables through ``textContent`` (see :data:`harness.leaderboard.table.HTML_SORT_SCRIPT`).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from harness.errors import HarnessError
from harness.io import atomic_write_text, read_json
from harness.leaderboard.table import Model, html_page, models_in, section_html, split_sections


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    _plt().close(fig)
    return path


def plot_metrics(models: list[Model], out: Path) -> list[Path]:
    """WR and LC per language across the models; the on-target rate per model and language."""
    plt = _plt()
    langs = sorted({lang for m in models for lang in m.rows})
    x = list(range(len(models)))
    labels = [m.label for m in models]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, (metric, title) in zip(axes, (("length_controlled_winrate", "LC (%)"), ("win_rate", "WR (%)"))):
        for lang in langs:
            ys = [m.rows[lang][metric] if lang in m.rows else None for m in models]
            ax.plot([i for i, y in zip(x, ys) if y is not None], [y for y in ys if y is not None], marker="o",
                    label=lang)
        ax.set_xticks(x, labels)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(title="language")
    paths = [_save(fig, out / "metrics.png")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for lang in langs:
        ys = [m.rows[lang].get("on_target_rate") if lang in m.rows else None for m in models]
        ax.plot([i for i, y in zip(x, ys) if y is not None], [100 * y for y in ys if y is not None], marker="o",
                label=lang)
    ax.set_xticks(x, labels)
    ax.set_ylim(-5, 105)
    ax.set_title("on-target language rate (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="language")
    paths.append(_save(fig, out / "on_target.png"))
    return paths


def _iterations(run: Path, stage: str, name: str) -> list[tuple[int, dict]]:
    found = []
    for d in run.glob(f"iter_*/{stage}"):
        tag = d.parent.name[len("iter_"):]
        if tag.isdigit() and (d / "_done.json").is_file() and (d / name).is_file():
            found.append((int(tag), read_json(d / name)))
    return sorted(found, key=lambda t: t[0])


def plot_pairs(run: Path, out: Path) -> list[Path]:
    """Chosen vs rejected mean length and alpha per iteration and language (pairs/summary.json)."""
    found = _iterations(run, "pairs", "summary.json")
    if not found:
        return []
    plt = _plt()
    langs = sorted({lang for _, s in found for lang in s})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(langs))
    for j, lang in enumerate(langs):
        its = [k for k, s in found if lang in s]
        pos = [k + (j - (len(langs) - 1) / 2) * width for k in its]
        chosen = [s[lang]["mean_chosen_length"] or 0 for k, s in found if lang in s]
        rejected = [s[lang]["mean_rejected_length"] or 0 for k, s in found if lang in s]
        axes[0].bar(pos, chosen, width * 0.45, label=f"{lang} chosen")
        axes[0].bar([p + width * 0.45 for p in pos], rejected, width * 0.45, label=f"{lang} rejected", alpha=0.55)
        alphas = [(k, s[lang]["alpha"]) for k, s in found if lang in s and s[lang].get("alpha") is not None]
        if alphas:  # strategies without length control (LIDR) have none
            axes[1].plot([k for k, _ in alphas], [a for _, a in alphas], marker="o", label=lang)
    its = [k for k, _ in found]
    unit = next(iter(found[0][1].values())).get("length_unit", "")
    axes[0].set_title(f"mean length of chosen vs rejected ({unit})")
    axes[0].set_xticks(its, [f"iter {k}" for k in its])
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].set_title("length-control alpha")
    axes[1].set_xticks(its, [f"iter {k}" for k in its])
    if axes[1].lines:
        axes[1].legend(title="language")
    for ax in axes:
        ax.grid(alpha=0.3)
    return [_save(fig, out / "length_control.png")]


def plot_training(run: Path, out: Path) -> list[Path]:
    """DPO loss and reward margin per logged step, one line per training stage (train_metrics.json)."""
    found = _iterations(run, "train", "train_metrics.json")
    if not found:
        return []
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, m in found:
        hist = [h for h in m.get("log_history", []) if "loss" in h]
        steps = [h.get("step", i + 1) for i, h in enumerate(hist)]
        axes[0].plot(steps, [h["loss"] for h in hist], marker=".", label=f"iter {k}")
        margins = [(s, h["rewards/margins"]) for s, h in zip(steps, hist) if "rewards/margins" in h]
        axes[1].plot([s for s, _ in margins], [v for _, v in margins], marker=".", label=f"iter {k}")
    axes[0].set_title("DPO (+NLL) loss per step")
    axes[1].set_title("reward margin (chosen - rejected) per step")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(title="train stage")
    return [_save(fig, out / "training.png")]


def outputs_page(model: Model, lang: str) -> str:
    """Each instruction with the reference's output, the model's output and the judge's preference (escaped)."""
    e = html.escape
    ann = read_json(Path(model.rows[lang]["path"]) / "annotations.json")
    rows = []
    for a in sorted(ann, key=lambda a: int(a["index"])):
        p = a.get("preference")
        verdict = ("unparsed" if p is None else "model" if p > 1.5 else "reference" if p < 1.5 else "draw")
        rows.append(f"<tr><td>{e(str(a['index']))}</td><td class='text'>{e(str(a['instruction']))}</td>"
                    f"<td class='text'>{e(str(a['output_1']))}</td><td class='text'>{e(str(a['output_2']))}</td>"
                    f"<td data-value='{'' if p is None else repr(float(p))}'>"
                    f"{'n/a' if p is None else f'{p:.3f}'} ({verdict})</td></tr>")
    r = model.rows[lang]
    body = (f"<p>{e(model.name)}, {e(lang)}: WR {e(str(r['win_rate']))}, LC {e(str(r['length_controlled_winrate']))}"
            f"; judge <code>{e(r['judge'])}</code>; reference {e(r['reference'])}. Preference: 1 = the reference is "
            f"better, 2 = the model is.</p><p><a href='../index.html'>back to the report</a></p>"
            "<style>td.text{text-align:left;white-space:pre-wrap;max-width:40em;vertical-align:top}</style>"
            "<table class='sortable'><thead><tr><th>id</th><th>instruction</th><th>reference output</th>"
            "<th>model output</th><th>preference</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return html_page(f"{model.name} / {lang}: outputs and judgements", body)


def write_report(run: str | Path, out: str | Path | None = None) -> dict:
    run = Path(run)
    if not run.is_dir() or not any(run.glob("iter_*")):
        raise HarnessError("not a run folder (no iter_*/)" if run.is_dir() else "no such run folder", run)
    models = models_in(run)
    out = Path(out) if out else run / "report"
    plots = plot_metrics(models, out / "plots") + plot_pairs(run, out / "plots") + plot_training(run, out / "plots")
    pages = 0
    for m in models:
        for lang in m.rows:
            atomic_write_text(out / "outputs" / f"{_safe(m.label)}_{_safe(lang)}.html", outputs_page(m, lang))
            pages += 1

    def link(m: Model, lang: str) -> str:
        return f"outputs/{_safe(m.label)}_{_safe(lang)}.html"

    sections = split_sections(models)
    imgs = "".join(f"<figure><img alt='{html.escape(p.stem)}' src='data:image/png;base64,"
                   f"{base64.b64encode(p.read_bytes()).decode()}'><figcaption>{html.escape(p.name)}</figcaption>"
                   "</figure>" for p in plots)
    body = ("<p>Each cell links to that model's outputs and judgements in that language. Click a header to sort.</p>"
            + "\n".join(section_html(s, i, link) for i, s in enumerate(sections, 1))
            + "<h2>Plots</h2><style>figure{display:inline-block;margin:0.5em}img{max-width:100%}</style>" + imgs)
    index = atomic_write_text(out / "index.html", html_page(f"Run report: {models[0].run}", body))
    return {"index": index, "plots": plots, "pages": pages}
