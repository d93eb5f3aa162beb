"""Tool signatures several test modules build prompts and gold calls from (OpenAI function objects)."""

from __future__ import annotations

# city and days required, units optional with a default: exercises the lenient args rule
WEATHER_WITH_UNITS = {
    "name": "get_weather",
    "description": "Weather forecast for a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "units": {"type": "string", "default": "metric"},
        },
        "required": ["city", "days"],
    },
}
# the same tool without the optional parameter
WEATHER = {
    "name": "get_weather",
    "description": "Weather forecast for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
SEARCH_CITY = {
    "name": "search_city",
    "description": "Search cities.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
