"""A planted two-context user: cooking questions and Python questions (for the context tests)."""

from __future__ import annotations

from middleware.models import Message, PreferencePair

COOKING = [
    "How long should I cook a whole chicken in the oven for this recipe",
    "What spices go into a good chicken curry recipe",
    "Which recipe gives sourdough bread a crispy crust in my oven",
    "Can I substitute butter with olive oil in a cookie recipe",
    "How do I cook pasta for this recipe so it does not stick in the pot",
    "What is the best recipe to cook a steak in a cast iron pan",
    "How much water and salt to cook a pot of rice for this recipe",
]
CODE = [
    "How do I reverse a list in Python",
    "Why does my Python function return None instead of a value",
    "How to write a unit test for a Python class method",
    "What is the difference between a list and a tuple in Python",
    "How do I read a JSON file into a dict in Python",
    "How to handle exceptions in a Python async function",
    "How do I profile slow Python code and find the hot loop",
]
COOKING_CALL = "What temperature should I roast vegetables in the oven, and with which oil"
CODE_CALL = "How can I sort a list of dicts by a key in Python"
UNRELATED_CALL = "Tell me about the history of the Roman empire"


def planted_pairs(user: str, *, tagged: bool) -> list[PreferencePair]:
    """Both topics interleaved in time; `tagged`: each pair carries its context tag."""
    pairs: list[PreferencePair] = []
    for i in range(len(COOKING)):
        for tag, prompt in (("cooking", COOKING[i]), ("code", CODE[i])):
            n = len(pairs)
            pairs.append(
                PreferencePair(
                    user_id=user,
                    context=[Message(role="user", content=prompt)],
                    chosen=Message(role="assistant", content=f"chosen answer to {prompt}"),
                    rejected=Message(role="assistant", content=f"rejected answer to {prompt}"),
                    timestamp=f"2024-01-01T00:{n // 60:02d}:{n % 60:02d}Z",
                    context_tag=tag if tagged else None,
                )
            )
    return pairs
