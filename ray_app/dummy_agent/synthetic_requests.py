"""Hand-written tool requests beyond the xLAM test rows: dotted tool names and another agent's tools.

Agents built on MCP or plug-in registries name tools like `crm.lookup_customer`; OpenAI rejects
dots, so an OpenAI-integrated agent sends an alias (`crm_lookup_customer`) and Langfuse records
the alias in `tool_calls[].function.name`. The dummy agent offers these tools under their dotted
names in the recorded `tools` list, so the converter has to map the alias back.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolRequest:
    """One user request with the tools offered and the correct call (gold)."""

    signatures: list[dict[str, Any]]
    query: str
    tool_name: str
    arguments: dict[str, Any]


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


DOTTED_TOOL_SIGNATURES = [
    {
        "name": "crm.lookup_customer",
        "description": "Find a customer record by email address.",
        "parameters": _object({"email": {"type": "string", "description": "Customer email address."}}, ["email"]),
    },
    {
        "name": "crm.create_ticket",
        "description": "Open a support ticket for a customer.",
        "parameters": _object(
            {
                "customer_id": {"type": "string", "description": "CRM customer id, e.g. CUS-1042."},
                "subject": {"type": "string", "description": "One-line summary of the problem."},
                "priority": {"type": "string", "enum": ["low", "normal", "high"], "description": "Ticket priority."},
            },
            ["customer_id", "subject"],
        ),
    },
    {
        "name": "billing.get_invoice",
        "description": "Fetch an invoice by its number.",
        "parameters": _object(
            {"invoice_number": {"type": "string", "description": "Invoice number, e.g. INV-2026-0042."}},
            ["invoice_number"],
        ),
    },
    {
        "name": "kb.search_articles",
        "description": "Search the help-center articles.",
        "parameters": _object(
            {
                "query": {"type": "string", "description": "What to search for."},
                "limit": {"type": "integer", "description": "Maximum number of articles.", "default": 5},
            },
            ["query"],
        ),
    },
]

OTHER_AGENT_TOOL_SIGNATURES = [
    {
        "name": "get_forecast",
        "description": "Weather forecast for a city.",
        "parameters": _object(
            {
                "city": {"type": "string", "description": "City name."},
                "days": {"type": "integer", "description": "Days ahead, 1 to 7.", "default": 1},
            },
            ["city"],
        ),
    }
]

FIRST_NAMES = ("ana", "bilal", "chen", "dara", "emeka", "freya", "goran", "hana")
LAST_NAMES = ("okafor", "lindqvist", "moreau", "tanaka", "silva", "novak", "haddad", "kowalski")
TICKET_SUBJECTS = ("cannot reset password", "charged twice this month", "export to CSV fails", "2FA codes rejected")
ARTICLE_TOPICS = ("refund policy", "single sign-on setup", "API rate limits", "changing the billing email")
CITIES = ("Lisbon", "Nairobi", "Osaka", "Montreal", "Tallinn", "Santiago")


def _lookup_customer(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    email = f"{rng.choice(FIRST_NAMES)}.{rng.choice(LAST_NAMES)}@example.com"
    return f"Can you pull up the customer account for {email}?", "crm.lookup_customer", {"email": email}


def _create_ticket(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    customer_id, subject = f"CUS-{rng.randint(1000, 9999)}", rng.choice(TICKET_SUBJECTS)
    priority = rng.choice(("low", "normal", "high"))
    query = f"Open a {priority}-priority ticket for customer {customer_id}: {subject}."
    return query, "crm.create_ticket", {"customer_id": customer_id, "subject": subject, "priority": priority}


def _get_invoice(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    number = f"INV-2026-{rng.randint(1, 999):04d}"
    return f"What are the line items on invoice {number}?", "billing.get_invoice", {"invoice_number": number}


def _search_articles(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    topic, limit = rng.choice(ARTICLE_TOPICS), rng.randint(2, 6)
    return f"Find {limit} help articles about {topic}.", "kb.search_articles", {"query": topic, "limit": limit}


DOTTED_REQUEST_MAKERS: tuple[Callable[[random.Random], tuple[str, str, dict[str, Any]]], ...] = (
    _lookup_customer,
    _create_ticket,
    _get_invoice,
    _search_articles,
)


def dotted_tool_requests(rng: random.Random, count: int) -> list[ToolRequest]:
    """`count` requests to the dotted-name tools, cycling through the tools so each one occurs."""
    requests = []
    for index in range(count):
        query, name, arguments = DOTTED_REQUEST_MAKERS[index % len(DOTTED_REQUEST_MAKERS)](rng)
        requests.append(ToolRequest(DOTTED_TOOL_SIGNATURES, query, name, arguments))
    return requests


def other_agent_requests(rng: random.Random, count: int) -> list[ToolRequest]:
    """Weather requests of another agent (its traces must be filtered out by agent id)."""
    requests = []
    for _ in range(count):
        city, days = rng.choice(CITIES), rng.randint(1, 5)
        query = f"What will the weather be like in {city} over the next {days} days?"
        requests.append(ToolRequest(OTHER_AGENT_TOOL_SIGNATURES, query, "get_forecast", {"city": city, "days": days}))
    return requests
