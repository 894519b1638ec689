"""A stored run as one self-contained HTML page that opens offline: summary cards, each per-question metric's
distribution, the retrieval stages side by side, the run against a baseline run (each metric's difference with
its paired 95% interval), and the worst-answered questions with their answer, citations and contexts side by side
(of a reranker gate's ranking: the worst-ranked queries with their relevant ids and top 10).

Charts are plotly figures; plotly.js is inlined once, so the file needs no network. Every text from a run (questions,
answers, sources) is HTML-escaped by the template.
"""

from __future__ import annotations

from datetime import datetime

from eval.runs import RANKING, ROW_METRICS, EvalRunInfo, compare_runs

# The headline figures, in the order a reader scans them; any other numeric metric follows.
SUMMARY_METRICS = (
    "answer_f1", "answer_contains_reference", "citation_precision", "citation_recall", "context_recall_at_k",
    "decline_rate_answerable", "refusal_rate_unanswerable", "unsupported_citation_rate", "latency_p50_ms", "first_token_p50_ms",
)
COUNTS = ("n", "answerable", "unanswerable", "errors", "queries")
# Metrics where lower is better (the cards colour a change by whether it helps).
LOWER_IS_BETTER = {"decline_rate_answerable", "unsupported_citation_rate", "latency_p50_ms", "latency_p95_ms", "first_token_p50_ms", "errors"}
WORST_QUESTIONS = 10
ROW_DEFAULTS = {"shape": None, "references": [], "error": None, "answer": "", "abstained": False, "abstain_reason": None, "citations": []}
CONTEXT_CHARS = 600  # of each retrieved context shown beside a worst question

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>citeloop eval report {{ run.id }}</title>
<script>{{ plotly_js | safe }}</script>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1280px; color: #1d2330; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 32px; border-bottom: 1px solid #dde2ea; }
.meta { color: #5b6475; } .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 10px; }
.card { border: 1px solid #dde2ea; border-radius: 8px; padding: 10px 12px; background: #fafbfd; }
.card .name { color: #5b6475; font-size: 12px; } .card .value { font-size: 22px; font-weight: 600; }
.card .delta { font-size: 12px; } .better { color: #137333; } .worse { color: #b3261e; } .note { font-size: 12px; color: #5b6475; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; } th, td { border: 1px solid #dde2ea; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f1f4f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.worst td { width: 33%; } .context { font-size: 12px; color: #333a48; margin-bottom: 6px; white-space: pre-wrap; }
.flag { color: #b3261e; font-weight: 600; } .ok { color: #137333; }
</style></head>
<body>
<h1>Evaluation run {{ run.id }}</h1>
<div class="meta">{{ run.questions }} on collection <b>{{ run.collection }}</b>{% if created %} · {{ created }}{% endif %}
 · {% for k, v in run.models.items() %}{{ k }}: {{ v }}{% if not loop.last %} · {% endif %}{% endfor %}</div>
<div class="meta">{% for k in counts %}{{ k }} {{ run.metrics.get(k) }}{% if not loop.last %} · {% endif %}{% endfor %}
{% if baseline %} · compared against <b>{{ baseline.id }}</b>{% if not comparison.same_questions %} (different question sets: {{ comparison.shared_questions }} in common){% endif %}{% if not comparison.same_judge %} (scored by different judges: judged metrics do not compare){% endif %}{% endif %}</div>

<h2>Summary</h2>
<div class="cards" id="summary">
{% for card in cards %}<div class="card"><div class="name">{{ card.name }}</div><div class="value">{{ card.value }}</div>
{% if card.delta is not none %}<div class="delta {{ card.direction }}">{{ card.delta }} vs baseline{% if card.ci %} (95% CI {{ card.ci }}){% endif %}</div>{% endif %}
{% if card.failures %}<div class="note flag">{{ card.failures }} failed rows</div>{% endif %}
{% if card.not_applicable %}<div class="note">{{ card.not_applicable }} rows not applicable</div>{% endif %}</div>
{% endfor %}</div>
{% if failures %}<p class="note">Rows a metric failed on (judge parse errors, timeouts, NaN) are counted here and left out of its mean, never scored zero:
{% for name, n in failures.items() %}{{ name }} {{ n }}{% if not loop.last %}, {% endif %}{% endfor %}.</p>{% endif %}

{% if by_shape %}<h2>Per question shape</h2>
<table id="shapes"><tr><th>metric</th>{% for shape in by_shape %}<th>{{ shape }}</th>{% endfor %}</tr>
{% for metric in shape_metrics %}<tr><td>{{ metric }}</td>{% for figures in by_shape.values() %}<td class="num">{{ fmt(figures.get(metric)) }}</td>{% endfor %}</tr>{% endfor %}
</table>{% endif %}

<h2>Distributions per question</h2>
<div class="chart" id="distributions">{{ distributions | safe }}</div>

{% if stages %}<h2>Retrieval stages</h2>
<div class="chart" id="stages">{{ stages | safe }}</div>
<table><tr><th>stage</th>{% for m in stage_metrics %}<th>{{ m }}</th>{% endfor %}</tr>
{% for stage, figures in run.metrics.retrieval_stages.items() %}<tr><td>{{ stage }}</td>{% for m in stage_metrics %}<td class="num">{{ fmt(figures.get(m)) }}</td>{% endfor %}</tr>{% endfor %}
</table>{% endif %}

{% if comparison %}<h2>Against {{ baseline.id }}</h2>
<div class="chart" id="before-after">{{ before_after | safe }}</div>
<table id="comparison"><tr><th>metric</th><th>{{ baseline.id }}</th><th>{{ run.id }}</th><th>difference</th><th>paired 95% CI (questions)</th></tr>
{% for name, m in comparison.metrics.items() %}<tr><td>{{ name }}</td><td class="num">{{ fmt(m.a) }}</td><td class="num">{{ fmt(m.b) }}</td>
<td class="num">{{ "%+.4f" % m.difference }}</td><td class="num">{% if m.get("ci95") %}{{ "%+.4f" % m.ci95[0] }} .. {{ "%+.4f" % m.ci95[1] }} ({{ m.paired_questions }}){% else %}-{% endif %}</td></tr>{% endfor %}
</table>
{% if comparison.changed_most %}<h3>Questions whose {{ comparison.changed_by }} moved most</h3>
<table><tr><th>question</th><th>{{ baseline.id }}</th><th>{{ run.id }}</th></tr>
{% for q in comparison.changed_most %}<tr><td>{{ q.question }}</td><td>{{ q.answer.a }}<div class="note">{{ comparison.changed_by }} {{ fmt(q[comparison.changed_by].a) }}</div></td>
<td>{{ q.answer.b }}<div class="note">{{ comparison.changed_by }} {{ fmt(q[comparison.changed_by].b) }}</div></td></tr>{% endfor %}</table>{% endif %}
{% endif %}

{% if ranking %}<h2>Worst-ranked queries</h2>
<p class="note">The queries with the lowest nDCG@10, with the ids judged relevant and {% if run.config.level == "judged" %}the judged chunks in the order ranked (the ranking condensed to them){% else %}the top 10 {{ run.config.level }} ids as ranked{% endif %} (relevant ones marked).</p>
<table class="worst" id="worst"><tr><th>query</th><th>judged relevant</th><th>top 10 as ranked</th></tr>
{% for row in worst %}<tr><td><b>{{ row.question }}</b><div class="note">{{ row.id }} · nDCG@10 {{ fmt(row["ndcg@10"]) }}</div></td>
<td>{% for id in row.relevant %}<div class="context">{{ id }}</div>{% endfor %}</td>
<td>{% for id in row.ranked %}<div class="context"><span class="{{ 'ok' if id in row.relevant else '' }}">{{ loop.index }}. {{ id }}</span></div>{% endfor %}</td></tr>{% endfor %}
</table>
{% else %}<h2>Worst-answered questions</h2>
<p class="note">Answerable questions with the lowest answer F1 (then the lowest ragas score), and unanswerable ones that were answered.</p>
<table class="worst" id="worst"><tr><th>question and reference</th><th>answer and citations</th><th>retrieved contexts</th></tr>
{% for row in worst %}<tr>
<td><b>{{ row.question }}</b><div class="note">{{ row.id }}{% if row.shape %} · {{ row.shape }}{% endif %}</div>
{% if row.references %}<p>reference: {{ row.references[0] }}</p>{% else %}<p class="note">unanswerable from the corpus</p>{% endif %}
<div class="note">{% for name, value in row.scores %}{{ name }} {{ fmt(value) }}{% if not loop.last %} · {% endif %}{% endfor %}</div></td>
<td>{% if row.error %}<p class="flag">generation failed: {{ row.error }}</p>{% else %}<p>{{ row.answer }}</p>
{% if row.abstained %}<div class="note">declined{% if row.abstain_reason %}: {{ row.abstain_reason }}{% endif %}</div>{% endif %}
{% for c in row.citations %}<div class="context"><span class="{{ 'ok' if c.supported else 'flag' }}">[{{ c.n }}] {{ 'supported' if c.supported else 'unsupported' }}</span>
{{ c.doc_id }}: “{{ c.quote }}”</div>{% endfor %}{% endif %}</td>
<td>{% for ctx in row.contexts %}<div class="context"><b>[{{ loop.index }}] {{ ctx.doc_id }}{% if ctx.gold %} (reference document){% endif %}</b>
{{ ctx.text }}</div>{% endfor %}</td></tr>{% endfor %}
</table>{% endif %}
</body></html>
"""


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"
    return str(value)


def per_row_metrics(run: EvalRunInfo) -> list[str]:
    """The metrics with a value per question: answer F1, contains-reference, each ragas metric the run scored."""
    return [m for m in (*ROW_METRICS, *run.failures) if m in run.metrics]


def _row_metric(row: dict, name: str):
    value = row.get(ROW_METRICS.get(name, name))
    return None if value is None or row.get("error") else float(value)


def _summary_cards(run: EvalRunInfo, comparison: dict | None, not_applicable: dict[str, int]) -> list[dict]:
    names = [m for m in SUMMARY_METRICS if m in run.metrics]
    names += [m for m in run.metrics if m not in names and m not in COUNTS and isinstance(run.metrics[m], (int, float))]
    cards = []
    for name in names:
        card = {"name": name, "value": fmt(run.metrics[name]), "delta": None, "direction": "", "ci": None,
                "failures": run.failures.get(name), "not_applicable": not_applicable.get(name)}
        against = (comparison or {}).get("metrics", {}).get(name)
        if against:
            # Where the metric has a value per question, the change shown is the paired one (over the questions
            # both runs scored), the quantity its interval is of.
            paired = "ci95" in against
            change = against["mean_paired_difference"] if paired else against["difference"]
            card["delta"] = f"{change:+.4f}" + (f" paired over {against['paired_questions']} questions" if paired else "")
            if change:
                card["direction"] = "better" if (change < 0) == (name in LOWER_IS_BETTER) else "worse"
            if paired:
                card["ci"] = f"{against['ci95'][0]:+.4f} .. {against['ci95'][1]:+.4f}"
        cards.append(card)
    return cards


def _figure_html(figure) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _distributions(run: EvalRunInfo, baseline: EvalRunInfo | None) -> str:
    import plotly.graph_objects as go

    figure = go.Figure()
    for label, source in ((baseline.id, baseline), (run.id, run)) if baseline else ((run.id, run),):
        names, values = [], []
        for name in per_row_metrics(run):
            for row in source.rows:
                value = _row_metric(row, name)
                if value is not None:
                    names.append(name)
                    values.append(value)
        figure.add_trace(go.Box(x=names, y=values, name=label, boxpoints="all", jitter=0.4, pointpos=0, marker={"size": 4}))
    figure.update_layout(boxmode="group", height=420, margin={"t": 20, "b": 40}, yaxis={"title": "value per question", "range": [-0.05, 1.05]})
    return _figure_html(figure)


def _stages(stages: dict[str, dict]) -> str:
    import plotly.graph_objects as go

    metrics = [m for m in next(iter(stages.values())) if m != "queries"]
    figure = go.Figure([go.Bar(name=m, x=list(stages), y=[stages[s].get(m) for s in stages]) for m in metrics])
    figure.update_layout(barmode="group", height=340, margin={"t": 20, "b": 40}, yaxis={"range": [0, 1]})
    return _figure_html(figure)


def _before_after(comparison: dict, baseline_id: str, run_id: str) -> str:
    import plotly.graph_objects as go

    names = [n for n, m in comparison["metrics"].items() if n not in COUNTS and isinstance(m["a"], (int, float)) and 0 <= m["a"] <= 1 and 0 <= m["b"] <= 1]
    a = [comparison["metrics"][n]["a"] for n in names]
    b = [comparison["metrics"][n]["b"] for n in names]
    # The paired difference's interval, as distances from the paired difference, drawn around the candidate's value.
    low = [max(0.0, m["mean_paired_difference"] - m["ci95"][0]) if "ci95" in m else 0 for m in (comparison["metrics"][n] for n in names)]
    high = [max(0.0, m["ci95"][1] - m["mean_paired_difference"]) if "ci95" in m else 0 for m in (comparison["metrics"][n] for n in names)]
    figure = go.Figure([
        go.Bar(name=baseline_id, x=names, y=a),
        go.Bar(name=run_id, x=names, y=b, error_y={"type": "data", "symmetric": False, "array": high, "arrayminus": low}),
    ])
    figure.update_layout(barmode="group", height=380, margin={"t": 20, "b": 80}, yaxis={"range": [0, 1.05]})
    return _figure_html(figure)


def worst_rows(run: EvalRunInfo, limit: int = WORST_QUESTIONS) -> list[dict]:
    """Failed generations, unanswerable questions that were answered, then answerable ones by answer F1 and
    their lowest ragas score, ascending; a ranking's queries by nDCG@10, ascending."""
    if run.config.get("kind") == RANKING:
        return sorted(run.rows, key=lambda row: row["ndcg@10"])[:limit]
    scored = per_row_metrics(run)

    def badness(row: dict) -> tuple:
        if row.get("error"):
            return (0, 0.0)
        if not row.get("answerable"):
            return (1, 0.0) if not row.get("abstained") else (3, 0.0)
        values = [v for v in (_row_metric(row, m) for m in scored if m not in ROW_METRICS) if v is not None]
        return (2, row.get("answer_f1") or 0.0, min(values, default=1.0))

    chosen = sorted((r for r in run.rows if badness(r)[0] < 3), key=badness)[:limit]
    out = []
    for stored in chosen:
        row = ROW_DEFAULTS | stored  # rows a caller stored by hand may lack fields eval qa writes
        texts = row.get("retrieved_contexts") or []
        doc_ids = row.get("context_doc_ids") or []
        gold = set(row.get("reference_doc_ids") or [])
        out.append(row | {
            "scores": [(m, _row_metric(row, m)) for m in scored],
            "contexts": [
                {"doc_id": d, "gold": d in gold, "text": t if len(t) <= CONTEXT_CHARS else t[:CONTEXT_CHARS] + " …"}
                for d, t in zip(doc_ids, texts)
            ],
        })
    return out


def render_report(run: EvalRunInfo, baseline: EvalRunInfo | None = None, by_shape: dict | None = None, not_applicable: dict | None = None) -> str:
    """The page for `run`, against `baseline` when given; `by_shape` and `not_applicable` come with a fresh run's
    report (a stored run keeps its overall metrics and rows)."""
    import jinja2
    from plotly.offline import get_plotlyjs

    comparison = compare_runs(baseline, run) if baseline else None
    stages = run.metrics.get("retrieval_stages")
    shape_metrics = [m for m in SUMMARY_METRICS if any(m in figures for figures in (by_shape or {}).values())]
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(TEMPLATE).render(
        run=run,
        created=run.created_at.strftime("%Y-%m-%d %H:%M UTC") if isinstance(run.created_at, datetime) else run.created_at,
        baseline=baseline,
        comparison=comparison,
        counts=[c for c in COUNTS if c in run.metrics],
        cards=_summary_cards(run, comparison, not_applicable or {}),
        failures={n: c for n, c in run.failures.items() if c},
        by_shape=by_shape or {},
        shape_metrics=shape_metrics,
        distributions=_distributions(run, baseline),
        stages=_stages(stages) if stages else "",
        stage_metrics=[m for m in next(iter(stages.values()))] if stages else [],
        before_after=_before_after(comparison, baseline.id, run.id) if comparison else "",
        worst=worst_rows(run),
        ranking=run.config.get("kind") == RANKING,
        fmt=fmt,
        plotly_js=get_plotlyjs(),
    )
