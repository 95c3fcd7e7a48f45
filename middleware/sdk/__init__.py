"""Client for the persona proxy: the official OpenAI client plus comparisons, preferences, personas.

from middleware.sdk import PersonalizedOpenAI

client = PersonalizedOpenAI(base_url="http://localhost:8080/v1", api_key="sk-app", user="alice")
client.chat.completions.create(model="gpt-4o-mini", messages=[...])   # personalized for alice
cmp = client.comparisons.create(model="gpt-4o-mini", messages=[...])
client.comparisons.judge(cmp.id, best=1, worst=3, rationale="shorter")
client.preferences.add(context="question", chosen="answer A", rejected="answer B")
client.feedback.send(response_id, "thumbs_up")   # response_id: the answer's x-persona-response-id
"""

from middleware.sdk.client import AsyncPersonalizedOpenAI, PersonalizedOpenAI
from middleware.sdk.types import (
    Candidate,
    Comparison,
    FeedbackResult,
    Judgement,
    Persona,
    PersonaVersion,
    PreferenceResult,
    RefreshJob,
)

__all__ = [
    "AsyncPersonalizedOpenAI",
    "Candidate",
    "Comparison",
    "FeedbackResult",
    "Judgement",
    "Persona",
    "PersonaVersion",
    "PersonalizedOpenAI",
    "PreferenceResult",
    "RefreshJob",
]
