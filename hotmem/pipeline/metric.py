"""Graph-quality metric: precision/recall/F1 of entities and relations against gold, and feedback per predictor.

Matching folds names (case, articles, punctuation, simple plurals, speaker aliases) and predicates (the schema's
synonyms and inverses). `GraphMetric` has GEPA's signature and writes the feedback GEPA reflects on: entity errors
for the entity predictor, relation errors for the relation predictor, unresolved pronouns for coref, missed
clauses for decompose.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import dspy

from hotmem.assemble import ExtractedRelation
from hotmem.names import FIRST_PERSON_WORDS, PRONOUNS, WORDS, is_grounded, is_pronoun, normalize_name
from hotmem.schema import CONVERSATION_SCHEMA, RelationSchema
from hotmem.types import Graph, Relation, Turn, render_turns, speakers_of

#: Weights of the scalar score GEPA maximises.
WEIGHTS = {"relation_f1": 0.5, "entity_f1": 0.3, "triple_f1": 0.1, "grounded": 0.1}
_MAX_LISTED = 8


def prf(true_positive: int, predicted: int, gold: int) -> tuple[float, float, float]:
    """Precision, recall, F1; an empty prediction of an empty gold is perfect."""
    if predicted == 0 and gold == 0:
        return 1.0, 1.0, 1.0
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _fmt(relation: Relation | ExtractedRelation) -> str:
    return f"({relation.subject}, {relation.predicate}, {relation.object})"


@dataclass
class GraphScore:
    """Scores of one predicted graph against gold, with the errors behind them."""

    entity_tp: int = 0
    entity_pred: int = 0
    entity_gold: int = 0
    relation_tp: int = 0
    relation_pred: int = 0
    relation_gold: int = 0
    triple_tp: int = 0
    schema_valid_relations: int = 0
    grounded_entities: int = 0
    missed_entities: list[str] = field(default_factory=list)
    spurious_entities: list[str] = field(default_factory=list)
    wrong_types: list[tuple[str, str, str]] = field(default_factory=list)  # name, predicted, gold
    ungrounded_entities: list[str] = field(default_factory=list)
    pronoun_entities: list[str] = field(default_factory=list)
    missed_relations: list[Relation] = field(default_factory=list)
    spurious_relations: list[Relation] = field(default_factory=list)
    wrong_predicates: list[tuple[Relation, Relation]] = field(default_factory=list)  # predicted, gold
    reversed_relations: list[tuple[Relation, Relation]] = field(default_factory=list)
    invalid_relations: list[Relation] = field(default_factory=list)

    @property
    def entity_prf(self) -> tuple[float, float, float]:
        return prf(self.entity_tp, self.entity_pred, self.entity_gold)

    @property
    def relation_prf(self) -> tuple[float, float, float]:
        return prf(self.relation_tp, self.relation_pred, self.relation_gold)

    @property
    def triple_prf(self) -> tuple[float, float, float]:
        return prf(self.triple_tp, self.relation_pred, self.relation_gold)

    @property
    def grounded_rate(self) -> float:
        return self.grounded_entities / self.entity_pred if self.entity_pred else 1.0

    @property
    def schema_valid(self) -> bool:
        return self.schema_valid_relations == self.relation_pred

    @property
    def score(self) -> float:
        parts = {
            "relation_f1": self.relation_prf[2],
            "entity_f1": self.entity_prf[2],
            "triple_f1": self.triple_prf[2],
            # an empty prediction earns grounding credit only where nothing was to be found
            "grounded": self.grounded_rate if self.entity_pred else float(self.entity_gold == 0),
        }
        return round(sum(WEIGHTS[k] * v for k, v in parts.items()), 4)


def _predicates_match(schema: RelationSchema, predicted: str, gold: str) -> bool:
    canonical_pred = schema.canonical(predicted) or predicted
    canonical_gold = schema.canonical(gold) or gold
    return canonical_pred == canonical_gold


def _one_statement_a_fact(graph: Graph, schema: RelationSchema, key) -> Graph:
    relations = schema.distinct(graph.relations, key)
    return graph if len(relations) == len(graph.relations) else graph.model_copy(update={"relations": relations})


def score_graph(
    gold: Graph,
    pred: Graph,
    *,
    text: str = "",
    speakers: Sequence[str] = (),
    schema: RelationSchema = CONVERSATION_SCHEMA,
    scored_pairs: Sequence[tuple[str, str]] | None = None,
    scored_predicates: Collection[str] | None = None,
) -> GraphScore:
    """Compare `pred` with `gold` (one-to-one greedy matching on normalised names and schema predicates).

    A fact stated twice in either graph (`A married_to B` and `B married_to A`, or `A parent_of B` and `B child_of A`)
    counts once, as the extractor keeps it (`RelationSchema.fact`).
    `scored_pairs`: when the annotation labels relations only between some argument pairs (DialogRE), predicted
    relations between other pairs are left out of the relation scores. `scored_predicates`: when it holds only some
    of the schema's predicates (a corpus mapped onto part of it), predicted relations with any other predicate are
    left out (one whose inverse is scored stays: it states a scored fact the other way round).
    """
    key = lambda name: normalize_name(name, speakers)  # noqa: E731
    gold, pred = (_one_statement_a_fact(graph, schema, key) for graph in (gold, pred))
    if scored_pairs is not None:
        pairs = {frozenset((key(a), key(b))) for a, b in scored_pairs}
        pred = pred.model_copy(update={"relations": [
            r for r in pred.relations if frozenset((key(r.subject), key(r.object))) in pairs
        ]})
    if scored_predicates is not None:
        inside = set(scored_predicates)
        pred = pred.model_copy(update={"relations": [
            r for r in pred.relations
            if {schema.canonical(r.predicate), schema.inverse_of(r.predicate)} & inside
        ]})
    result = GraphScore(entity_pred=len(pred.entities), entity_gold=len(gold.entities))

    gold_entities = {key(e.name): e for e in gold.entities}
    matched: set[str] = set()
    for entity in pred.entities:
        k = key(entity.name)
        if is_pronoun(entity.name):
            result.pronoun_entities.append(entity.name)
        if text and is_grounded(entity.name, text, speakers):
            result.grounded_entities += 1
        elif not text:
            result.grounded_entities += 1
        else:
            result.ungrounded_entities.append(entity.name)
        if k in gold_entities and k not in matched:
            matched.add(k)
            result.entity_tp += 1
            gold_type = gold_entities[k].type
            if gold_type != entity.type and gold_type in schema.entity_types:
                result.wrong_types.append((entity.name, entity.type, gold_type))
        else:
            result.spurious_entities.append(entity.name)
    result.missed_entities = [e.name for k, e in gold_entities.items() if k not in matched]

    types = {key(e.name): e.type for e in pred.entities}
    result.relation_pred = len(pred.relations)
    result.relation_gold = len(gold.relations)
    unmatched_gold = list(gold.relations)
    pair_gold = list(gold.relations)
    for relation in pred.relations:
        s, o = key(relation.subject), key(relation.object)
        if schema.allows(relation, types.get(s), types.get(o)):
            result.schema_valid_relations += 1
        else:
            result.invalid_relations.append(relation)
        inverse = schema.inverse_of(relation.predicate)
        hit = next(
            (
                g
                for g in unmatched_gold
                if (key(g.subject), key(g.object)) == (s, o) and _predicates_match(schema, relation.predicate, g.predicate)
                or (
                    inverse
                    and (key(g.subject), key(g.object)) == (o, s)
                    and _predicates_match(schema, inverse, g.predicate)
                )
            ),
            None,
        )
        if hit is not None:
            unmatched_gold.remove(hit)
            result.relation_tp += 1
        pair = next((g for g in pair_gold if {key(g.subject), key(g.object)} == {s, o}), None)
        if pair is not None:
            pair_gold.remove(pair)
            result.triple_tp += 1
            if hit is None:
                same_direction = (key(pair.subject), key(pair.object)) == (s, o)
                if not same_direction and _predicates_match(schema, relation.predicate, pair.predicate):
                    result.reversed_relations.append((relation, pair))
                else:
                    result.wrong_predicates.append((relation, pair))
        elif hit is None:
            result.spurious_relations.append(relation)
    confused = {id(g) for _, g in result.wrong_predicates + result.reversed_relations}
    result.missed_relations = [g for g in unmatched_gold if id(g) not in confused]
    return result


# --------------------------------------------------------------------------- feedback



def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _gold_summary(gold: Graph) -> str:
    if gold.is_empty:
        return "The correct graph is empty: the conversation states no fact."
    entities = _listing([f"{e.name} [{e.type}]" for e in gold.entities])
    relations = _listing([_fmt(r) for r in gold.relations]) or "none"
    return f"Correct entities: {entities}. Correct relations: {relations}."


def entity_feedback(result: GraphScore) -> list[str]:
    lines = []
    if result.missed_entities:
        lines.append(f"Missed entities: {_listing(result.missed_entities)}.")
    if result.spurious_entities:
        lines.append(f"Spurious entities (not in the correct graph): {_listing(result.spurious_entities)}.")
    if result.wrong_types:
        lines.append("Wrong types: " + _listing([f"{n} is {g}, not {p}" for n, p, g in result.wrong_types]) + ".")
    if result.ungrounded_entities:
        lines.append(
            f"Ungrounded entities (neither the speaker nor said in the text): {_listing(result.ungrounded_entities)}."
        )
    if result.pronoun_entities:
        lines.append(f"Pronouns listed as entities: {_listing(result.pronoun_entities)}; name what they refer to.")
    return lines


def relation_feedback(result: GraphScore) -> list[str]:
    lines = []
    if result.missed_relations:
        lines.append(f"Missed relations: {_listing([_fmt(r) for r in result.missed_relations])}.")
    if result.spurious_relations:
        lines.append(f"Spurious relations: {_listing([_fmt(r) for r in result.spurious_relations])}.")
    if result.wrong_predicates:
        lines.append(
            "Wrong predicate: "
            + _listing([f"{_fmt(p)} should be {_fmt(g)}" for p, g in result.wrong_predicates])
            + "."
        )
    if result.reversed_relations:
        lines.append(
            "Reversed direction: "
            + _listing([f"{_fmt(p)} should be {_fmt(g)}" for p, g in result.reversed_relations])
            + "."
        )
    if result.invalid_relations:
        lines.append(
            "Not allowed by the relation inventory (unknown predicate or wrong endpoint types): "
            + _listing([_fmt(r) for r in result.invalid_relations])
            + "."
        )
    return lines


def forbidden_relation_feedback(pred, graph: Graph, schema: RelationSchema, speakers: Sequence[str]) -> list[str]:
    """Relations the relations step wrote that the inventory forbids and closed extraction dropped before scoring
    (so they are neither spurious nor invalid in the score): unknown predicates and wrong endpoint types."""
    key = lambda name: normalize_name(name, speakers)  # noqa: E731
    types = {key(e.name): e.type for e in getattr(pred, "extracted_entities", None) or []}
    kept = {(key(r.subject), r.predicate, key(r.object)) for r in graph.relations}
    unknown, mistyped = [], []
    for raw in getattr(pred, "extracted_relations", None) or []:
        predicate = schema.canonical(raw.predicate)
        if predicate is None:
            unknown.append(_fmt(raw))
            continue
        spec, head, tail = schema.get(predicate), types.get(key(raw.subject)), types.get(key(raw.object))
        relation = Relation(subject=raw.subject, predicate=predicate, object=raw.object)
        if (key(raw.subject), predicate, key(raw.object)) in kept or schema.allows(relation, head, tail):
            continue
        mistyped.append(f"({raw.subject} [{head}], {predicate}, {raw.object} [{tail}]) but {predicate} links "
                        f"{'/'.join(spec.head_types)} to {'/'.join(spec.tail_types)}")
    lines = []
    if unknown:
        lines.append(f"Dropped, predicate not in the inventory: {_listing(unknown)}.")
    if mistyped:
        lines.append(f"Dropped, endpoint types the predicate does not allow: {_listing(mistyped)}.")
    return lines


def rejected_feedback(pred) -> list[str]:
    """What the verify step rejected (the missed relations above say which of them were right)."""
    rejected = getattr(pred, "rejected_relations", None) or []
    if not rejected:
        return []
    return [f"Rejected by the check: {_listing([_fmt(r) for r in rejected])}."]


def coref_feedback(result: GraphScore, statements: Sequence[str], speakers: Sequence[str]) -> list[str]:
    lines = []
    left = sorted({w for s in statements for w in WORDS.findall(s) if w.casefold() in PRONOUNS | FIRST_PERSON_WORDS})
    if left:
        lines.append(
            f"Unresolved pronouns remain in the statements: {_listing(left)}. "
            f"I/me/my is {' or '.join(speakers)} (the person speaking); every other pronoun must be replaced by "
            "the entity it refers to."
        )
    if result.pronoun_entities:
        lines.append(f"Pronouns ended up as entities: {_listing(result.pronoun_entities)}.")
    return lines


def decompose_feedback(gold: Graph, statements: Sequence[str], speakers: Sequence[str]) -> list[str]:
    lines = []
    if gold.is_empty and statements:
        lines.append(
            f"The conversation states no fact, yet you wrote {len(statements)} statement(s): "
            f"{_listing(list(statements))}. Return an empty list for questions, greetings and chit-chat."
        )
    said = [set(normalize_name(s, speakers).split()) for s in statements]
    missed = []
    for relation in gold.relations:
        words = set(normalize_name(relation.subject, speakers).split()) | set(
            normalize_name(relation.object, speakers).split()
        )
        words.discard("'s")
        if not any(words <= s | {"speaker"} for s in said):
            missed.append(_fmt(relation))
    if missed:
        lines.append(f"No statement states these facts (missed clauses): {_listing(missed)}.")
    return lines


def predicted_graph(pred) -> Graph:
    """The graph a program predicted; an empty one when the prediction is missing or broken (it then scores zero)."""
    graph = getattr(pred, "graph", None) if pred is not None else None
    return graph if isinstance(graph, Graph) else Graph()


class GraphMetric:
    """Callable with GEPA's signature `(gold, pred, trace, pred_name, pred_trace)`.

    Returns a float when called as a plain metric (`pred_name is None` and `trace is None`, as `dspy.Evaluate`
    does) and a `dspy.Prediction(score=..., feedback=...)` when GEPA asks about one predictor.
    """

    def __init__(self, schema: RelationSchema = CONVERSATION_SCHEMA):
        self.schema = schema

    def evaluate(self, gold: dspy.Example, pred: dspy.Prediction) -> tuple[GraphScore, str]:
        turns: list[Turn] = gold.turns
        text = render_turns(turns)
        speakers = speakers_of(turns)
        graph = predicted_graph(pred)
        result = score_graph(gold.graph, graph, text=text, speakers=speakers, schema=self.schema,
                             scored_pairs=getattr(gold, "scored_pairs", None),
                             scored_predicates=getattr(gold, "scored_predicates", None))
        return result, text

    def __call__(self, gold, pred, trace=None, pred_name=None, pred_trace=None):
        result, _ = self.evaluate(gold, pred)
        if pred_name is None and trace is None:
            return result.score
        return dspy.Prediction(score=result.score, feedback=self.feedback(gold, pred, result, pred_name))

    def feedback(self, gold, pred, result: GraphScore, pred_name: str | None) -> str:
        speakers = speakers_of(gold.turns)
        statements = list(getattr(pred, "statements", None) or [])
        entity_p, entity_r, entity_f = result.entity_prf
        rel_p, rel_r, rel_f = result.relation_prf
        header = (
            f"Score {result.score:.2f}: relation F1 {rel_f:.2f} (P {rel_p:.2f}, R {rel_r:.2f}), "
            f"entity F1 {entity_f:.2f} (P {entity_p:.2f}, R {entity_r:.2f})."
        )
        name = (pred_name or "").split(".")[0]
        if name == "entities":
            lines = entity_feedback(result)
        elif name == "relations":
            lines = relation_feedback(result) + forbidden_relation_feedback(pred, predicted_graph(pred), self.schema,
                                                                            speakers)
        elif name == "verify":
            lines = relation_feedback(result) + rejected_feedback(pred)
        elif name == "coref":
            lines = coref_feedback(result, statements, speakers)
        elif name == "decompose":
            lines = decompose_feedback(gold.graph, statements, speakers)
        else:
            lines = entity_feedback(result) + relation_feedback(result)
        if not lines:
            lines = ["This step made no error on this example."]
        return "\n".join([header, *lines, _gold_summary(gold.graph)])


def to_example(record) -> dspy.Example:
    """A `Record` as the `dspy.Example` programs and the metric take (input: `turns`; gold: `graph`)."""
    return dspy.Example(
        turns=list(record.turns), graph=record.graph, id=record.id, category=record.category,
        scored_pairs=record.scored_pairs, scored_predicates=record.scored_predicates,
    ).with_inputs("turns")
