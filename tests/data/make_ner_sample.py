"""Writes tests/data/ner_sample.conll: sentences from hand-written templates and invented names."""
import random

PER = ["Anna Kowalczyk", "Tomas Berg", "Lena Hart", "Marco Ruiz", "Priya Nair", "Jonas Vik", "Elif Demir",
       "Sam Okafor", "Greta Lind", "Hugo Brandt", "Mei Tanaka", "Oscar Falk", "Ines Moreau", "Kofi Mensah"]
LOC = ["Oslo", "Lisbon", "Nairobi", "Kraków", "Valparaíso", "Lake Tana", "Porto", "Tromsø", "Kyoto",
       "Mount Elgon", "Ghent", "Tallinn", "New Harbour", "Bergen"]
ORG = ["Northwind Labs", "Redfern Bank", "Atlas Rail", "Harbour Council", "Bluepeak Energy",
       "Stellar Foods", "Ostrava Steel", "City Library", "Greenway Transit", "Kestrel Media"]
MISC = ["Norwegian", "Portuguese", "Kenyan", "Olympic", "Nobel", "Baltic", "Japanese", "Euro Cup"]
TEMPLATES = [
    "{PER} flew to {LOC} on Monday .",
    "{ORG} opened a new office in {LOC} .",
    "{PER} joined {ORG} last year .",
    "The {MISC} team beat {ORG} 2 - 1 .",
    "{PER} and {PER} met in {LOC} to sign the deal .",
    "Shares of {ORG} fell after {PER} resigned .",
    "A {MISC} festival will be held in {LOC} next week .",
    "{PER} said {ORG} would hire 200 people .",
    "Heavy rain closed roads near {LOC} .",
    "{ORG} and {ORG} agreed to merge .",
    "{PER} won the {MISC} prize for her work .",
    "Tourists from {LOC} visited {LOC} in June .",
    "The report by {ORG} praised {PER} .",
    "{PER} grew up in {LOC} .",
    "Prices rose slightly in March .",
]


def tagged(template, rng):
    words = []
    for part in template.split():
        if part.startswith("{") and part.endswith("}"):
            kind = part[1:-1]
            name = rng.choice({"PER": PER, "LOC": LOC, "ORG": ORG, "MISC": MISC}[kind]).split()
            words += [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(name)]
        else:
            words.append((part, "O"))
    return words


def main(path, n=300, seed=0):
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for i in range(n):
        for word, tag in tagged(TEMPLATES[i % len(TEMPLATES)], rng):
            lines.append(f"{word} {tag}")
        lines.append("")
        if i == n // 2:
            lines += ["-DOCSTART- -X- -X- O", ""]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))


if __name__ == "__main__":
    import sys
    main(sys.argv[1])
