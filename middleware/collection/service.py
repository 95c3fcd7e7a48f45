"""Create comparisons and record judgements.

A comparison: the conversation (a session's best-only history, then the new messages), rendered in
every variant, answered concurrently, and stored as pending with a TTL. A judgement (best, worst,
rationale) becomes ONE atomic write to the user's preference log: the raw judgement plus the derived
pairs (best > each other, each other > worst), then the comparison is closed and, in a session,
only the best answer is appended to its history.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from middleware.candidates.generate import Candidate, generate
from middleware.candidates.variants import DEFAULT_VARIANTS, Variant, plans
from middleware.errors import Conflict, NotFound, UpstreamError, ValidationFailed
from middleware.idempotency import keyed_id
from middleware.models import Message, PreferencePair
from middleware.personalize.contexts import last_user_text
from middleware.personalize.service import Personalizer
from middleware.store.comparisons import Claim, ComparisonStore
from middleware.store.preferences import PreferenceStore
from middleware.upstream import UpstreamRouter

SOURCE = "comparison"
HEADER_FIELDS = ("id", "object", "user", "model", "session_id", "persona_version", "variants")


def new_comparison_id() -> str:
    return f"cmp_{uuid.uuid4().hex}"


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Prepared:
    """Everything needed to generate the candidates of one comparison."""

    id: str
    tenant: str
    user: str
    model: str
    conversation: list[dict[str, Any]]  # what the user saw: history + new messages (no persona)
    new_messages: list[dict[str, Any]]
    session_id: str | None
    session_len: int
    variants: Sequence[Variant]
    persona_version: int | None
    block: str | None  # the persona block every candidate carries
    extra: dict[str, Any]
    request_hash: str | None = None  # the fingerprint of a keyed creation's request
    context_tag: str | None = None  # the app's context tag: routes the persona, tags the pairs

    def header(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "comparison",
            "user": self.user,
            "model": self.model,
            "session_id": self.session_id,
            "persona_version": self.persona_version,
            "variants": [v.model_dump() for v in self.variants],
        }


class ComparisonService:
    def __init__(
        self,
        store: ComparisonStore,
        personalizer: Personalizer,
        upstreams: UpstreamRouter,
        preferences: PreferenceStore,
    ) -> None:
        self.store = store
        self._personalizer = personalizer
        self._upstreams = upstreams
        self._preferences = preferences

    # --- creating -----------------------------------------------------------------------------------
    async def prepare(
        self,
        tenant: str,
        user: str,
        *,
        model: str,
        messages: list[dict[str, Any]],
        variants: Sequence[Variant] | None = None,
        session_id: str | None = None,
        persona: bool = True,
        extra: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        context_tag: str | None = None,
    ) -> Prepared:
        """With an idempotency key the comparison's id is derived from it (see `replay`)."""
        history: list[dict[str, Any]] = []
        if session_id:
            history = await self.store.session_messages(tenant, user, session_id)
        conversation = [*history, *messages]
        version: int | None = None
        block: str | None = None
        if persona:
            found = await self._personalizer.current(
                tenant, user, tag=context_tag, text=last_user_text(conversation)
            )
            if found is not None:
                version, block = found.version, found.block
        return Prepared(
            id=keyed_id("cmp", idempotency_key, tenant, user) if idempotency_key else new_comparison_id(),
            tenant=tenant,
            user=user,
            model=model,
            conversation=conversation,
            new_messages=messages,
            session_id=session_id,
            session_len=len(history),
            variants=tuple(variants or DEFAULT_VARIANTS),
            persona_version=version,
            block=block,
            extra=extra or {},
            request_hash=request_hash if idempotency_key else None,
            context_tag=context_tag,
        )

    async def replay(
        self, tenant: str, user: str, idempotency_key: str, request_hash: str
    ) -> dict[str, Any] | None:
        """What a creation with this key stored (its public body), or None when it stored nothing.

        A comparison already judged, or a key first used for another request, is a 409: the key
        names one creation."""
        comparison_id = keyed_id("cmp", idempotency_key, tenant, user)
        stored, judged = await self.store.lookup(tenant, user, comparison_id)
        if stored is None:
            if judged:
                raise Conflict(
                    f"the comparison created with this idempotency key ({comparison_id}) has already been judged",
                    code="already_judged",
                )
            return None
        if stored.get("request_hash") != request_hash:
            raise Conflict(
                "this idempotency key was used for another comparison request", code="idempotency_key_reused"
            )
        return self.public(stored)

    def public(self, stored: dict[str, Any]) -> dict[str, Any]:
        """The body a creation answers, from the stored comparison."""
        header = {k: stored.get(k) for k in HEADER_FIELDS}
        return {
            **header,
            "created": stored["created"],
            "expires_at": stored["created"] + self.store.ttl_s,
            "candidates": stored["candidates"],
        }

    async def candidates(self, prepared: Prepared) -> AsyncIterator[Candidate]:
        """Candidates in the order they finish; all variants run at once."""
        upstream, model_name = self._upstreams.route(prepared.model)
        async for candidate in generate(
            upstream,
            {**prepared.extra, "model": model_name},
            prepared.conversation,
            plans(prepared.variants, prepared.block),
            require_text=True,
        ):
            yield candidate

    async def store_pending(self, prepared: Prepared, finished: list[Candidate]) -> dict[str, Any]:
        """Store the finished comparison (TTL) and return its public body. All failed -> 502."""
        finished = sorted(finished, key=lambda c: c.index)
        if not any(c.ok for c in finished):
            first = next((c.error for c in finished if c.error is not None), None)
            raise UpstreamError(
                f"every candidate failed; first error: {first.message if first else 'unknown'}",
                code="all_candidates_failed",
            )
        candidates = [c.to_dict() for c in finished]
        created = int(time.time())
        record = {
            **prepared.header(),
            "context_tag": prepared.context_tag,
            "tenant": prepared.tenant,
            "conversation": prepared.conversation,
            "new_messages": prepared.new_messages,
            "session_len": prepared.session_len,
            "candidates": candidates,
            "created": created,
            "request_hash": prepared.request_hash,
        }
        if not await self.store.save(prepared.tenant, prepared.user, prepared.id, record):
            # the same key, created concurrently: the first one stored stands
            stored = await self.store.load(prepared.tenant, prepared.user, prepared.id)
            if stored is not None:
                return self.public(stored)
        return self.public(record)

    async def create(self, prepared: Prepared) -> dict[str, Any]:
        return await self.store_pending(prepared, [c async for c in self.candidates(prepared)])

    # --- judging ------------------------------------------------------------------------------------
    async def locate(self, tenant: str, user: str | None, comparison_id: str) -> str:
        """The owner of a comparison; another tenant's or user's comparison is simply not found."""
        owner = await self.store.owner(comparison_id)
        if owner is None or owner[0] != tenant or (user is not None and owner[1] != user):
            raise NotFound(f"comparison {comparison_id!r} does not exist or has expired", param="id")
        return owner[1]

    async def judge(
        self,
        tenant: str,
        user: str | None,
        comparison_id: str,
        *,
        best: int,
        worst: int,
        rationale: str,
    ) -> dict[str, Any]:
        user = await self.locate(tenant, user, comparison_id)
        if best == worst:
            raise ValidationFailed("best and worst must be different candidates", param="worst")
        token = uuid.uuid4().hex
        claim = await self.store.claim(tenant, user, comparison_id, token)
        if claim is Claim.JUDGED:
            raise Conflict(f"comparison {comparison_id!r} has already been judged", code="already_judged")
        if claim is Claim.BUSY:
            raise Conflict(f"a judgement of comparison {comparison_id!r} is being recorded", code="busy")
        if claim is Claim.MISSING:
            raise NotFound(f"comparison {comparison_id!r} does not exist or has expired", param="id")
        try:
            comparison = await self.store.load(tenant, user, comparison_id)
            if comparison is None:
                raise NotFound(f"comparison {comparison_id!r} does not exist or has expired", param="id")
            answered = {c["index"]: c for c in comparison["candidates"] if "content" in c}
            for name, index in (("best", best), ("worst", worst)):
                if index not in answered:
                    raise ValidationFailed(
                        f"{name}={index} is not a candidate with an answer (answered: {sorted(answered)})",
                        param=name,
                    )
            records = judgement_records(comparison, best=best, worst=worst, rationale=rationale)
            flags = await self._preferences.add(tenant, user, records)
        except BaseException:
            with contextlib.suppress(Exception):  # the claim also expires on its own
                await self.store.release(tenant, user, comparison_id, token)
            raise
        judged_at = _now()
        best_message = {"role": "assistant", "content": answered[best]["content"]}
        appended = await self.store.finalize(
            tenant,
            user,
            comparison_id,
            token,
            judged={"best": best, "worst": worst, "judged_at": judged_at},
            judgement_new=flags[0],
            session_id=comparison.get("session_id"),
            expected_session_len=int(comparison.get("session_len", 0)),
            append=[*comparison["new_messages"], best_message],
        )
        if appended < 0:
            raise Conflict(f"comparison {comparison_id!r} was judged concurrently", code="busy")
        return {
            "id": comparison_id,
            "object": "comparison.judgement",
            "user": user,
            "best": best,
            "worst": worst,
            "judged_at": judged_at,
            "records": [
                {"id": r[0], "kind": r[1], "created": f} for r, f in zip(records, flags, strict=True)
            ],
            "pairs_added": sum(1 for r, f in zip(records, flags, strict=True) if f and r[1] == "pair"),
            "session_id": comparison.get("session_id"),
            "session_appended": appended == 1,
            "best_message": best_message,
        }


def judgement_records(
    comparison: dict[str, Any], *, best: int, worst: int, rationale: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """The raw judgement first, then best > each other, then each other (not worst) > worst.

    A derived pair whose two answers are the same text is left out (the raw judgement keeps all).
    """
    cid = comparison["id"]
    user = comparison["user"]
    answered = {c["index"]: c for c in comparison["candidates"] if "content" in c}
    now = _now()
    records: list[tuple[str, str, dict[str, Any]]] = [
        (
            f"{cid}:judgement",
            "judgement",
            {
                "comparison_id": cid,
                "user_id": user,
                "model": comparison["model"],
                "context": comparison["conversation"],
                "candidates": comparison["candidates"],
                "variants": comparison["variants"],
                "best": best,
                "worst": worst,
                "rationale": rationale,
                "session_id": comparison.get("session_id"),
                "persona_version": comparison.get("persona_version"),
                "created": comparison.get("created"),
                "timestamp": now,
                "source": SOURCE,
            },
        )
    ]
    ordered = [(best, other) for other in sorted(answered) if other != best]
    ordered += [(other, worst) for other in sorted(answered) if other not in (best, worst)]
    context = [Message.model_validate(m) for m in comparison["conversation"]]
    for winner, loser in ordered:
        if answered[winner]["content"].strip() == answered[loser]["content"].strip():
            continue  # two identical answers say nothing about a preference
        pair_id = f"{cid}:{winner}>{loser}"
        pair = PreferencePair(
            id=pair_id,
            user_id=user,
            context=context,
            chosen=Message(role="assistant", content=answered[winner]["content"]),
            rejected=Message(role="assistant", content=answered[loser]["content"]),
            rationale=rationale or None,
            timestamp=now,
            source=SOURCE,
            item_id=cid,
            context_tag=comparison.get("context_tag"),
        )
        data = pair.model_dump(mode="json")
        data.update(
            comparison_id=cid,
            chosen_index=winner,
            rejected_index=loser,
            chosen_variant=answered[winner]["variant"],
            rejected_variant=answered[loser]["variant"],
        )
        records.append((pair_id, "pair", data))
    return records
