"""Generated Turkish grade-school word problems, for the offline demo and tests.

Each template draws names, items, sentence forms and numbers from a seeded
generator and writes a question, the true answer, a correct free-text Turkish
solution and a plausible wrong one. Like `ytu-ce-cosmos/gsm8k_tr`, whose
machine-written solutions disagree with the official answer about 25% of the
time, a row's solution is the wrong one at its template's `error_rate`:
multi-step problems are most often cut short at an intermediate quantity (the
discount instead of the price paid, minutes instead of hours), one-step ones
slip by one or ten. The verified answer travels as a GSM8K-style `#### N`
label after the solution, the way `prepare` gets gold answers from a reference.

Numbers are small and round, as in early grade-school problems, so that the
demo's from-scratch model can learn the arithmetic facts in minutes; they
follow Turkish conventions: "1.250" groups thousands and "2,5" is a
decimal. A recipe names the data set `synthetic` or `synthetic:N` (N problems,
default 2000).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

# Name → its genitive, spelled out because the suffix follows vowel harmony.
GENITIVE = {
    "Ayşe": "Ayşe'nin", "Mehmet": "Mehmet'in", "Elif": "Elif'in", "Can": "Can'ın", "Zeynep": "Zeynep'in",
    "Emre": "Emre'nin", "Deniz": "Deniz'in", "Ali": "Ali'nin", "Selin": "Selin'in", "Burak": "Burak'ın",
    "Ece": "Ece'nin", "Kerem": "Kerem'in", "Defne": "Defne'nin", "Mert": "Mert'in", "Yusuf": "Yusuf'un",
    "Ahmet": "Ahmet'in", "Fatma": "Fatma'nın", "Oğuz": "Oğuz'un", "Nur": "Nur'un", "Umut": "Umut'un",
}
NAMES = list(GENITIVE)
# (item, possessed form after a genitive, accusative)
ITEMS = [("elma", "elması", "elmayı"), ("kalem", "kalemi", "kalemi"), ("kitap", "kitabı", "kitabı"),
         ("bilye", "bilyesi", "bilyeyi"), ("kurabiye", "kurabiyesi", "kurabiyeyi"),
         ("çıkartma", "çıkartması", "çıkartmayı"), ("portakal", "portakalı", "portakalı"),
         ("defter", "defteri", "defteri"), ("oyuncak", "oyuncağı", "oyuncağı"), ("kart", "kartı", "kartı")]
GOODS = [("elma", 10), ("domates", 20), ("peynir", 80), ("kiraz", 60), ("un", 30), ("şeker", 40)]  # TL per kg
RELATIVES = ["kardeşine", "annesine", "arkadaşına", "kuzenine", "komşusuna"]
ACTIVITIES = ["kitap okuyor", "piyano çalışıyor", "yürüyüş yapıyor", "yüzme çalışıyor", "resim yapıyor"]


def tr_number(value: int | Fraction) -> str:
    """A number in Turkish notation: dots group thousands, a comma starts the decimals.

    >>> tr_number(1250), tr_number(Fraction(5, 2)), tr_number(Fraction(-3, 4))
    ('1.250', '2,5', '-0,75')
    """
    value = Fraction(value)
    sign = "-" if value < 0 else ""
    whole, rest = divmod(abs(value), 1)
    text = f"{int(whole):,}".replace(",", ".")
    if rest:
        text += "," + f"{float(rest):.4f}"[2:].rstrip("0")
    return sign + text


@dataclass(frozen=True)
class Problem:
    """One generated problem: a correct and a plausible wrong solution, and the true answer."""

    question: str
    solution: str
    answer: int | Fraction
    mistake: str  # a solution whose last number is wrong


def _slip(r: random.Random, value: int) -> int:
    """An arithmetic slip: off by one or by ten, never negative and never right."""
    return max(0, value + r.choice([-10, -1, 1, 10])) or value + 1


def _add(r: random.Random) -> Problem:
    name, (item, owned, _) = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 9), r.randint(2, 9)
    whose = GENITIVE[name]
    q = r.choice([
        f"{whose} {a} {owned} var. Arkadaşı ona {b} {item} daha veriyor. {whose} şimdi kaç {owned} var?",
        f"{name} önce {a} {item} topladı, sonra {b} {item} daha topladı. {name} toplam kaç {item} topladı?",
    ])
    wrong = _slip(r, a + b)
    s = f"Başta {a} {item} vardı ve {b} {item} eklendi. {a} + {b} = {{}} olur. Toplam {{}} {item} vardır."
    return Problem(q, s.format(a + b, a + b), a + b, s.format(wrong, wrong))


def _sub(r: random.Random) -> Problem:
    name, (item, owned, _) = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(10, 18), r.randint(2, 9)
    q = r.choice([
        f"{GENITIVE[name]} {a} {owned} vardı. {b} tanesini {r.choice(RELATIVES)} verdi. Geriye kaç {owned} kaldı?",
        f"{name} {a} {item} aldı ve bunların {b} tanesini kaybetti. {GENITIVE[name]} kaç {owned} kaldı?",
    ])
    wrong = _slip(r, a - b)
    s = f"{name} {a} {item} ile başladı ve {b} tanesi gitti. {a} - {b} = {{}}. Geriye {{}} {item} kaldı."
    return Problem(q, s.format(a - b, a - b), a - b, s.format(wrong, wrong))


def _groups(r: random.Random) -> Problem:
    name, (item, owned, _) = r.choice(NAMES), r.choice(ITEMS)
    boxes, per_box, extra = r.randint(2, 5), r.randint(2, 5), r.randint(1, 5)
    total = boxes * per_box + extra
    whose = GENITIVE[name]
    q = r.choice([
        f"{whose} her birinde {per_box} {item} olan {boxes} kutusu ve ayrıca {extra} {item} var. {whose} toplam kaç {owned} var?",
        f"{name} {boxes} paket {item} aldı; her pakette {per_box} {item} var. Ayrıca yerde {extra} {item} buldu. {whose} kaç {owned} oldu?",
    ])
    first = f"Paketlerdeki {item} sayısı {boxes} x {per_box} = {boxes * per_box}."
    s = f"{first} Ayrıca {extra} tane var: {boxes * per_box} + {extra} = {total}. Toplam {total} {item} vardır."
    return Problem(q, s, total, f"{first} Toplam {boxes * per_box} {item} vardır.")


def _money(r: random.Random) -> Problem:
    name, (item, _, _) = r.choice(NAMES), r.choice(ITEMS)
    count, price = r.randint(2, 5), r.choice([5, 10, 20, 50])
    total = count * price
    budget = r.choice([b for b in (100, 200, 500, 1000) if b > total and b != 2 * total])
    q = r.choice([
        f"{name} tanesi {price} TL olan {count} {item} aldı. Cebinde {tr_number(budget)} TL vardı. "
        f"Alışverişten sonra {GENITIVE[name]} kaç TL'si kaldı?",
        f"{GENITIVE[name]} {tr_number(budget)} TL'si var. Tanesi {price} TL olan {item}lardan {count} tane alıyor. Geriye kaç TL kalır?",
    ])
    first = f"{count} {item} için {count} x {price} = {tr_number(total)} TL ödedi."
    s = f"{first} Kalan para {tr_number(budget)} - {tr_number(total)} = {tr_number(budget - total)} TL'dir."
    return Problem(q, s, budget - total, f"{first} Harcanan para {tr_number(total)} TL'dir.")


def _percent(r: random.Random) -> Problem:
    name, (item, _, accusative) = r.choice(NAMES), r.choice(ITEMS)
    # Prices in twenties, so every discount is whole; never 50%, where the discount equals the price paid.
    price, pct = r.choice(range(20, 101, 20)), r.choice([10, 20, 25])
    off = price * pct // 100
    q = r.choice([
        f"Bir {item} {price} TL'dir. Mağaza %{pct} indirim yapıyor. {name} bu {accusative} kaç TL'ye alır?",
        f"{name} etiket fiyatı {price} TL olan bir {item} görüyor. Kasada %{pct} indirim var. {name} kaç TL öder?",
    ])
    first = f"İndirim {price} TL'nin %{pct}'i, yani {price} x {pct} / 100 = {off} TL'dir."
    s = f"{first} {name} {price} - {off} = {price - off} TL öder."
    return Problem(q, s, price - off, f"{first} {name} {off} TL öder.")


def _time(r: random.Random) -> Problem:
    name, activity = r.choice(NAMES), r.choice(ACTIVITIES)
    per_day = r.choice([15, 20, 30, 60])
    days = r.choice([d for d in range(2, 15) if d * per_day % 60 == 0])
    minutes = days * per_day
    q = r.choice([
        f"{name} her gün {per_day} dakika {activity}. {days} günde toplam kaç saat {activity.split()[0]} için ayırır?",
        f"{name} {days} gün boyunca günde {per_day} dakika {activity}. Bu toplam kaç saat eder?",
    ])
    first = f"{days} günde {days} x {per_day} = {minutes} dakika eder."
    s = f"{first} Bir saat 60 dakikadır: {minutes} / 60 = {minutes // 60} saat."
    return Problem(q, s, minutes // 60, f"{first} Toplam {minutes} dakika.")


def _share(r: random.Random) -> Problem:
    (item, _, _), people = r.choice(ITEMS), r.randint(2, 6)
    each, eaten = r.randint(3, 9), r.randint(1, 2)
    total = people * each
    chosen = r.sample(NAMES, min(people, 3))
    names = f"{', '.join(chosen[:-1])} ve {chosen[-1]}" if people <= 3 else f"{', '.join(chosen)} ve diğerleri"
    q = (f"{total} {item} {people} kişi arasında eşit paylaştırılıyor ({names}). "
         f"Her kişi payından {eaten} tanesini hemen kullanıyor. Her kişinin elinde kaç {item} kalır?")
    first = f"{total} {item} {people} kişiye bölünür: {total} / {people} = {each}."
    s = f"{first} Her kişi {eaten} tane kullanır: {each} - {eaten} = {each - eaten}. Her kişide {each - eaten} {item} kalır."
    return Problem(q, s, each - eaten, f"{first} Her kişide {each} {item} kalır.")


def _weight(r: random.Random) -> Problem:
    name, (good, per_kg) = r.choice(NAMES), r.choice(GOODS)
    halves = r.randint(3, 9)  # 1,5 to 4,5 kg, in halves
    kg = Fraction(halves, 2)
    cost = kg * per_kg
    q = r.choice([
        f"{good.capitalize()} kilosu {per_kg} TL'dir. {name} {tr_number(kg)} kg {good} alıyor. Kaç TL öder?",
        f"{name} pazardan kilosu {per_kg} TL olan {good} alıyor. {tr_number(kg)} kilo için kaç TL ödemesi gerekir?",
    ])
    wrong = cost + per_kg if r.random() < 0.5 else cost - Fraction(per_kg, 2)
    s = f"{tr_number(kg)} kg x {per_kg} TL = {{}} TL. {name} {{}} TL öder."
    return Problem(q, s.format(tr_number(cost), tr_number(cost)), cost,
                   s.format(tr_number(wrong), tr_number(wrong)))


# Template → how often its machine-written solution is wrong: 25% over all templates, as in the real data.
TEMPLATES: dict[Callable[[random.Random], Problem], float] = {
    _add: 0.05, _sub: 0.05, _groups: 0.3, _money: 0.3, _percent: 0.6, _time: 0.6, _share: 0.05, _weight: 0.05,
}


def kind_of(template: Callable[[random.Random], Problem]) -> str:
    """A template's kind name (`_percent` → `percent`), kept with each row for analysis by kind."""
    return template.__name__.lstrip("_")


def answer_text(value: int | Fraction) -> str:
    """The gold label as written after `####` (GSM8K style, no grouping)."""
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"


def make_problems(count: int, seed: int = 0, noisy: bool = True) -> list[dict[str, str]]:
    """`count` distinct problems as {"question", "solution", "gold", "kind"} rows, deterministic for a seed.

    With `noisy`, a row's solution is its template's wrong one at that
    template's error rate.

    >>> rows = make_problems(3, seed=1)
    >>> len(rows), sorted(rows[0])
    (3, ['gold', 'kind', 'question', 'solution'])
    """
    r = random.Random(seed)
    templates, rates = list(TEMPLATES), list(TEMPLATES.values())
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < count:
        attempts += 1
        if attempts > 50 * count:
            raise ValueError(f"cannot make {count} distinct problems; the templates are too few")
        index = r.randrange(len(templates))
        problem = templates[index](r)
        wrong = noisy and r.random() < rates[index]
        if problem.question not in seen:
            seen.add(problem.question)
            rows.append({"question": problem.question, "solution": problem.mistake if wrong else problem.solution,
                         "gold": answer_text(problem.answer), "kind": kind_of(templates[index])})
    return rows
