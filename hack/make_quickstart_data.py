#!/usr/bin/env python3
"""Write the quickstart dataset (examples/data/quickstart/): support tickets to triage as JSON.

A task a tiny model can visibly learn in a minute on a CPU: every answer has the same JSON shape,
with fields copied from the ticket (customer, city) or chosen from a few classes (topic,
priority). Chat format (OpenAI "messages"), so it goes through the chat template and only the
assistant's answer is trained. General text, never trained on, is what the evaluation gate uses
to check that the model did not forget everything else. Deterministic: the same files every run.

    python hack/make_quickstart_data.py [--out examples/data/quickstart]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

FIRST = ["Alice", "Bruno", "Chen", "Dara", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kemi", "Luca"]
LAST = ["Martin", "Silva", "Wang", "Okafor", "Novak", "Haddad", "Kim", "Berg", "Costa", "Moreau", "Sato", "Reyes"]
CITIES = ["Lisbon", "Berlin", "Lagos", "Osaka", "Toronto", "Lima", "Dublin", "Nairobi", "Oslo", "Madrid"]
PROBLEMS = {
    "billing": [
        "the invoice page shows an error when paying by card",
        "I was charged twice for the same order",
        "the refund for my last purchase never arrived",
        "my receipt lists the wrong amount",
    ],
    "login": [
        "the password reset email never arrives",
        "I am locked out after two wrong passwords",
        "the login page keeps reloading",
        "two-factor codes are always rejected",
    ],
    "shipping": [
        "my parcel has been stuck in transit for a week",
        "the tracking number does not work",
        "the box arrived damaged",
        "the courier left the package at the wrong address",
    ],
    "bug": [
        "the app crashes when I open settings",
        "search returns nothing for any query",
        "the export button does nothing",
        "pictures do not load on the profile page",
    ],
}
URGENT = ["today", "right now", "before the weekend", "urgently"]
SYSTEM = "You triage support tickets. Answer with one JSON object: customer, city, topic, priority."

GENERAL = [
    "The river runs past the old mill and into the valley before it reaches the sea.",
    "Bread rises when yeast turns sugar into gas, which is why dough is left to rest in a warm place.",
    "In the spring the orchard fills with blossom, and by late summer the branches bend under the fruit.",
    "A good map shows roads, rivers and hills, and a legend that explains every symbol on it.",
    "The library opens at nine in the morning and closes at six in the evening on weekdays.",
    "Tea was first drunk in China and later spread along trade routes to the rest of the world.",
    "The orchestra tuned their instruments while the audience found their seats in the hall.",
    "Mountains are colder at the top because the air there is thinner and holds less heat.",
    "She planted tomatoes, beans and herbs in the small garden behind the house.",
    "The train left the station on time and reached the coast a little after noon.",
    "Children learn to read by hearing stories and by sounding out the letters of new words.",
    "The museum keeps old coins, maps and letters from the time when the town was founded.",
    "Rain fell all night, and in the morning the streets were washed clean and shining.",
    "A bicycle is an efficient machine that turns the work of the legs into steady motion.",
    "The market sells fresh fish in the morning and flowers and vegetables in the afternoon.",
    "Stars seem to move across the sky because the earth turns once every day.",
]


def ticket(rng: random.Random) -> dict:
    customer = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    city = rng.choice(CITIES)
    topic = rng.choice(sorted(PROBLEMS))
    problem = rng.choice(PROBLEMS[topic])
    urgent = rng.random() < 0.4
    text = f"Customer {customer} from {city} writes: {problem}"
    text += f", please fix it {rng.choice(URGENT)}." if urgent else "."
    answer = {"customer": customer, "city": city, "topic": topic, "priority": "high" if urgent else "normal"}
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps(answer)},
        ]
    }


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "examples/data/quickstart")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(20261128)
    write_jsonl(args.out / "train.jsonl", [ticket(rng) for _ in range(320)])
    write_jsonl(args.out / "eval.jsonl", [ticket(rng) for _ in range(40)])
    general = [{"text": sentence} for sentence in GENERAL]
    write_jsonl(args.out / "general.jsonl", general)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
