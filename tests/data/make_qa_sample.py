"""Writes tests/data/qa_sample.json: SQuAD v1.1-layout questions on paragraphs built from hand-written
templates and invented facts (places, people, firms and numbers that do not exist).

Each paragraph states several facts of the same kind (two years, several people), so a question can
only be answered by reading it; some questions list a second, longer or shorter gold answer, as the
SQuAD dev sets do. Deterministic: the same seed writes the same file.
"""
import json
import random
import re

TOWNS = ["Ravenholt", "Marlow Cross", "Tessaly", "Brindlecombe", "Oskarvik", "Pellinore", "Vardenfell", "Quillmoor",
         "Saltmere", "Harrowgate Vale", "Dunmarra", "Elsworth", "Kirrin Bay", "Lowenstad", "Amberly", "Corvanne"]
PEOPLE = ["Ilse Maren", "Tobias Wren", "Adaeze Okoro", "Henrik Solberg", "Lucia Ferrante", "Milo Castell",
          "Yara Delacroix", "Piet Vanderloo", "Noor Haddad", "Ewan Strachan", "Sigrid Holm", "Rafael Ituarte",
          "Clara Bexley", "Jonah Pryce", "Mirela Vasko", "Otto Lindqvist", "Amara Nwosu", "Felix Dorne"]
REGIONS = ["Keld", "Ashmoor", "Varrow", "Tolland", "Brenn"]
TRADES = ["miller", "fisherman", "merchant", "stonemason", "weaver", "surveyor"]
INDUSTRIES = ["salt mining", "glassmaking", "wool weaving", "boat building", "cheese making", "paper milling"]
RIVERS = ["Elda", "Murrow", "Tavish", "Corrin", "Sable", "Wendle", "Ostra"]
LAKES = ["Fenwick", "Orla", "Grisedale", "Mirrin", "Hollin"]
FIRMS = ["Brightwater Instruments", "Kestrel Looms", "Northgate Optics", "Harbourline Motors", "Ember Ceramics",
         "Fallow Bicycles", "Tidewell Pumps", "Greyfield Pianos"]
PRODUCTS = ["barometers", "weaving looms", "telescope lenses", "electric ferries", "kitchen tiles",
            "folding bicycles", "water pumps", "upright pianos"]
SUBJECTS = ["physics", "chemistry", "music", "engineering", "geology"]
MODELS = ["Lark", "Heron", "Comet", "Aster", "Falcon", "Juniper"]
FIELDS = ["botanist", "geologist", "astronomer", "cartographer", "linguist"]
PLACES = ["northern fjords", "Keld hills", "salt marshes", "eastern glaciers", "coral islands"]
WORKS = ["a survey of alpine mosses", "a map of the tidal caves", "a catalogue of variable stars",
         "a dictionary of coastal dialects", "a study of glacier ice"]
SCHOOLS = ["the Varrow Institute", "Tolland College", "the Brenn Academy", "Saltmere University"]

# (template, questions): {slot} fills come from the pools; a question is (text, answer slot, alternatives)
# where an alternative is (prefix, suffix) around the slot that is also a gold answer when it is in the text
TOWN = ("{town} is a small town in the {region} hills. It was founded in {year} by {founder}, a {trade} from "
        "{origin}. The railway reached {town} in {year2}, and its station was designed by {architect}. Today "
        "the main industry is {industry}, and the works of {firm} employ about {count} people. The river "
        "{river} runs through the old quarter before it joins Lake {lake}. The current mayor, {mayor}, was "
        "elected in {year3}.",
        [("Who founded {town}?", "founder", ()),
         ("When was {town} founded?", "year", (("in ", ""),)),
         ("What is the main industry of {town}?", "industry", ()),
         ("Which river runs through {town}?", "river", (("The river ", ""),)),
         ("Who designed the station of {town}?", "architect", ()),
         ("How many people work for {firm} in {town}?", "count", (("about ", " people"),)),
         ("Who is the mayor of {town}?", "mayor", ()),
         ("In which year did the railway reach {town}?", "year2", ()),
         ("Which lake does the {river} flow into?", "lake", (("Lake ", ""),))])
FIRM = ("{firm} is a maker of {product} based in {town}. The firm was started in {year} by {founder} and "
        "{cofounder}, who met while studying {subject} in {city}. Its best-known product, the {model}, went on "
        "sale in {year2}. In {year3} the company moved its head office to {city2}. {boss} has led the company "
        "since {year4}, and it now has about {count} staff.",
        [("What does {firm} make?", "product", ()),
         ("Who started {firm} together with {cofounder}?", "founder", ()),
         ("Where did the founders of {firm} meet?", "city", (("in ", ""),)),
         ("What did the founders of {firm} study?", "subject", ()),
         ("When did the {model} go on sale?", "year2", ()),
         ("Where is the head office of {firm} now?", "city2", ()),
         ("Who leads {firm}?", "boss", ()),
         ("How many staff does {firm} have?", "count", (("about ", " staff"),)),
         ("What is the best-known product of {firm}?", "model", (("the ", ""),))])
PERSON = ("{person} was a {field} born in {town} in {year}. After studying at {school}, {person} spent {duration} "
          "years in the {place}. The work {person} is best remembered for is {work}, published in {year2}. "
          "Later {person} taught at {school2}, where {student} was among the students. {person} died in "
          "{city} in {year3}.",
         [("What was the profession of {person}?", "field", ()),
          ("Where was {person} born?", "town", ()),
          ("Where did {person} study?", "school", ()),
          ("What is {person} best remembered for?", "work", ()),
          ("When was {work} published?", "year2", ()),
          ("Where did {person} teach?", "school2", ()),
          ("Who studied under {person} at {school2}?", "student", ()),
          ("Where did {person} die?", "city", ()),
          ("How many years did {person} spend in the {place}?", "duration", ())])
KINDS = (TOWN, FIRM, PERSON)

_SLOT = re.compile(r"\{(\w+)\}")


def _pool(slot):
    base = slot.rstrip("0123456789")
    return {"town": TOWNS, "origin": TOWNS, "city": TOWNS, "founder": PEOPLE, "architect": PEOPLE, "mayor": PEOPLE,
            "cofounder": PEOPLE, "boss": PEOPLE, "person": PEOPLE, "student": PEOPLE, "region": REGIONS,
            "trade": TRADES, "industry": INDUSTRIES, "river": RIVERS, "lake": LAKES, "firm": FIRMS,
            "product": PRODUCTS, "subject": SUBJECTS, "model": MODELS, "field": FIELDS, "place": PLACES,
            "work": WORKS, "school": SCHOOLS}.get(base)


def fill(template, rng):
    """(text, values, first position of each slot's own fill) with distinct values per pool."""
    values, used = {}, set()
    for slot in dict.fromkeys(_SLOT.findall(template)):
        pool = _pool(slot)
        if pool is None:  # numbers: years, a duration in years, head counts
            low, high = {"year": (1700, 1990), "duration": (2, 40)}.get(slot.rstrip("0123456789"), (12, 900))
            value = str(rng.randrange(low, high))
            while value in used:
                value = str(int(value) + 1)
        else:
            value = rng.choice([v for v in pool if v not in used])
        values[slot] = value
        used.add(value)
    text, positions, end = "", {}, 0
    for m in _SLOT.finditer(template):
        text += template[end:m.start()]
        positions.setdefault(m.group(1), len(text))
        text += values[m.group(1)]
        end = m.end()
    return text + template[end:], values, positions


def answers_for(context, values, positions, slot, alternatives):
    start, value = positions[slot], values[slot]
    out = [{"text": value, "answer_start": start}]
    for prefix, suffix in alternatives:
        at = start - len(prefix)
        if at >= 0 and context[at:start] == prefix and context[start + len(value):].startswith(suffix):
            out.append({"text": prefix + value + suffix, "answer_start": at})
    return out


def main(path, paragraphs=100, questions_per_paragraph=3, seed=0):
    rng = random.Random(seed)
    data = []
    for p in range(paragraphs):
        template, questions = KINDS[p % len(KINDS)]
        context, values, positions = fill(template, rng)
        qas = []
        for q, (question, slot, alternatives) in enumerate(rng.sample(questions, questions_per_paragraph)):
            answers = answers_for(context, values, positions, slot, alternatives)
            assert all(context[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"] for a in answers)
            qas.append({"id": f"q{p:03d}-{q}", "question": _SLOT.sub(lambda m: values[m.group(1)], question),
                        "answers": answers})
        title = values.get("town") if template is TOWN else values.get("firm", values.get("person"))
        data.append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"version": "1.1", "data": data}, fh, ensure_ascii=False, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    import sys
    main(sys.argv[1])
