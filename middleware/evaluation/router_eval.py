"""Router accuracy on real data (`persona eval`, README "Contexts").

Each pair's natural context is its tag, else the label its prompt carries: the subreddit of a Reddit
TL;DR post (`SUBREDDIT: r/<name>`), the debate of a UKPConvArg argument (`Debate: <topic>`). Per user
(time-ordered split, as the offline protocol): the train pairs of each context with at least
`min_pairs` pairs form the user's contexts and the router's centroids (`build_router`, as induction
stores them); for each held-out pair of one of those contexts, the router (no tag) picks a context
from the pair's last user turn. Accuracy = the share of those picks that name the pair's context
(a pick of the general persona counts as wrong). Reported with the label line left in the prompt and
taken out (then the router must recognise the topic from the text alone), beside the accuracy of
always picking the user's largest context, and over users with at least two contexts.
"""

from __future__ import annotations

import re
from statistics import mean
from typing import Any

from middleware.evaluation.offline import bootstrap_ci
from middleware.models import PreferencePair
from middleware.personalize.contexts import Router, build_router, prompt_text
from middleware.preferences.formats import time_split

_LABELS = (
    re.compile(r"^SUBREDDIT: r/(\S+)[ \t]*\n?", re.M),
    re.compile(r"^Debate: (.+?)[ \t]*\n?$", re.M),
)


def natural_context(pair: PreferencePair) -> str | None:
    if pair.context_tag:
        return pair.context_tag
    text = prompt_text(pair)
    for label in _LABELS:
        found = label.search(text)
        if found:
            return found.group(1).strip().lower()
    return None


def without_label(text: str) -> str:
    for label in _LABELS:
        text = label.sub("", text, count=1)
    return text


def router_accuracy(
    pairs_by_user: dict[str, list[PreferencePair]],
    *,
    min_pairs: int,
    threshold: float,
    train_fraction: float = 0.7,
    seed: int = 0,
) -> dict[str, Any]:
    """The router's accuracy over users with at least two contexts (see the module docstring)."""
    results: dict[str, Any] = {"min_pairs": min_pairs, "threshold": threshold}
    for variant, strip in (("label_in_prompt", False), ("label_removed", True)):
        per_user, majority, pooled_right, pooled_n, abstained = [], [], 0, 0, 0
        contexts_per_user = []
        for pairs in pairs_by_user.values():
            train, test = time_split(pairs, train_fraction)
            by_context: dict[str, list[str]] = {}
            for p in train:
                name = natural_context(p)
                if name is not None:
                    text = prompt_text(p)
                    by_context.setdefault(name, []).append(without_label(text) if strip else text)
            kept = {n: ("tag", texts) for n, (texts) in by_context.items() if len(texts) >= min_pairs}
            if len(kept) < 2:
                continue
            router = Router(build_router(kept))  # type: ignore[arg-type]
            largest = max(kept, key=lambda n: len(kept[n][1]))
            right = base = n = 0
            for p in test:
                truth = natural_context(p)
                if truth not in kept:
                    continue
                text = prompt_text(p)
                route = router.route(without_label(text) if strip else text, threshold)
                right += route.context == truth
                abstained += route.context is None
                base += largest == truth
                n += 1
            if n:
                per_user.append(right / n)
                majority.append(base / n)
                pooled_right, pooled_n = pooled_right + right, pooled_n + n
                contexts_per_user.append(len(kept))
        low, high = bootstrap_ci(per_user, seed=seed) if per_user else (0.0, 0.0)
        results[variant] = {
            "users": len(per_user),
            "held_out_pairs": pooled_n,
            "contexts_per_user": round(mean(contexts_per_user), 2) if contexts_per_user else 0,
            "mean_accuracy": round(mean(per_user), 4) if per_user else None,
            "ci": [round(low, 4), round(high, 4)],
            "pooled_accuracy": round(pooled_right / pooled_n, 4) if pooled_n else None,
            "general_picked": round(abstained / pooled_n, 4) if pooled_n else None,
            "largest_context_accuracy": round(mean(majority), 4) if majority else None,
        }
    return results


def describe(result: dict[str, Any]) -> str:
    lines = []
    for variant in ("label_in_prompt", "label_removed"):
        r = result[variant]
        if not r["users"]:
            lines.append(
                f"router ({variant}): no user has two contexts of {result['min_pairs']}+ train pairs"
            )
            continue
        lines.append(
            f"router ({variant.replace('_', ' ')}): accuracy {r['mean_accuracy']:.3f} "
            f"[95% CI {r['ci'][0]:.3f}, {r['ci'][1]:.3f}] over {r['users']} users "
            f"({r['held_out_pairs']} held-out pairs, {r['contexts_per_user']} contexts a user; "
            f"general picked {r['general_picked']:.3f}; largest context always {r['largest_context_accuracy']:.3f})"
        )
    return "\n".join(lines)
