"""Generated Turkish grade-school word problems, for the offline demo and tests.

Each template draws names, items and numbers from a seeded generator and
writes a question and a free-text Turkish solution shaped like the real
dataset's (no `#### N` line, the answer stated in the last sentence).
Numbers above 999 use Turkish grouping ("1.250"). The data set is named in a
recipe as `synthetic` or `synthetic:N` (N problems, default 2000).
"""

from __future__ import annotations

import random
from collections.abc import Callable

# Name → its genitive, spelled out because the suffix follows vowel harmony.
GENITIVE = {
    "Ayşe": "Ayşe'nin", "Mehmet": "Mehmet'in", "Elif": "Elif'in", "Can": "Can'ın", "Zeynep": "Zeynep'in",
    "Emre": "Emre'nin", "Deniz": "Deniz'in", "Ali": "Ali'nin", "Selin": "Selin'in", "Burak": "Burak'ın",
    "Ece": "Ece'nin", "Kerem": "Kerem'in", "Defne": "Defne'nin", "Mert": "Mert'in",
}
NAMES = list(GENITIVE)
ITEMS = [("elma", "elması"), ("kalem", "kalemi"), ("kitap", "kitabı"), ("bilye", "bilyesi"), ("kurabiye", "kurabiyesi"),
         ("çıkartma", "çıkartması"), ("portakal", "portakalı"), ("defter", "defteri")]


def _tr(n: int) -> str:
    """An integer in Turkish notation: dots group thousands."""
    return f"{n:,}".replace(",", ".")


Problem = tuple[str, str, int]


def _add(r: random.Random) -> Problem:
    name, (item, owned) = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 60), r.randint(2, 60)
    whose = GENITIVE[name]
    q = f"{whose} {a} {owned} var. Arkadaşı ona {b} {item} daha veriyor. {whose} şimdi kaç {owned} var?"
    s = f"{whose} başta {a} {owned} vardı. {b} {item} daha alınca {a} + {b} = {a + b} olur. {whose} şimdi {a + b} {owned} vardır."
    return q, s, a + b


def _sub(r: random.Random) -> Problem:
    name, (item, owned) = r.choice(NAMES), r.choice(ITEMS)
    a = r.randint(20, 99)
    b = r.randint(1, a - 1)
    q = f"{GENITIVE[name]} {a} {owned} vardı. {b} tanesini kardeşine verdi. Geriye kaç {owned} kaldı?"
    s = f"{name} {a} {item} ile başladı ve {b} tanesini verdi. {a} - {b} = {a - b}. Geriye {a - b} {item} kaldı."
    return q, s, a - b


def _money(r: random.Random) -> Problem:
    name, (item, _) = r.choice(NAMES), r.choice(ITEMS)
    count, price = r.randint(2, 12), r.randint(3, 150)
    budget = count * price + r.randint(0, 500)
    total = count * price
    q = (f"{name} tanesi {price} TL olan {count} {item} aldı. Cebinde {_tr(budget)} TL vardı. "
         f"Alışverişten sonra {GENITIVE[name]} kaç TL'si kaldı?")
    s = (f"{count} {item} için {count} x {price} = {_tr(total)} TL ödedi. "
         f"Kalan para {_tr(budget)} - {_tr(total)} = {_tr(budget - total)} TL'dir.")
    return q, s, budget - total


def _time(r: random.Random) -> Problem:
    name = r.choice(NAMES)
    per_day, days = r.choice([15, 20, 30, 45, 60]), r.randint(2, 14)
    q = f"{name} her gün {per_day} dakika kitap okuyor. {days} günde toplam kaç dakika okur?"
    s = f"Her gün {per_day} dakika okuyor. {days} günde {days} x {per_day} = {days * per_day} dakika okur."
    return q, s, days * per_day


def _percent(r: random.Random) -> Problem:
    name, (item, _) = r.choice(NAMES), r.choice(ITEMS)
    price, pct = r.choice([40, 60, 80, 100, 120, 200, 250, 400]), r.choice([10, 20, 25, 50])
    off = price * pct // 100
    q = f"Bir {item} {price} TL'dir. Mağaza %{pct} indirim yapıyor. {name} bu {item} için kaç TL öder?"
    s = f"İndirim {price} x %{pct} = {off} TL'dir. {name} {price} - {off} = {price - off} TL öder."
    return q, s, price - off


def _share(r: random.Random) -> Problem:
    (item, _), people = r.choice(ITEMS), r.randint(2, 9)
    each = r.randint(2, 25)
    total = people * each
    chosen = r.sample(NAMES, min(people, 3))
    names = f"{', '.join(chosen[:-1])} ve {chosen[-1]}" if people <= 3 else f"{', '.join(chosen)} ve diğerleri"
    q = f"{total} {item} {people} kişi arasında eşit paylaştırılıyor ({names}). Her kişiye kaç {item} düşer?"
    s = f"{total} {item} {people} kişiye bölünür: {total} / {people} = {each}. Her kişiye {each} {item} düşer."
    return q, s, each


def _two_step(r: random.Random) -> Problem:
    name, (item, owned) = r.choice(NAMES), r.choice(ITEMS)
    boxes, per_box, extra = r.randint(2, 9), r.randint(3, 12), r.randint(1, 20)
    total = boxes * per_box + extra
    whose = GENITIVE[name]
    q = f"{whose} her birinde {per_box} {item} olan {boxes} kutusu ve ayrıca {extra} {item} var. {whose} toplam kaç {owned} var?"
    s = (f"Kutulardaki {item} sayısı {boxes} x {per_box} = {boxes * per_box}. "
         f"Ayrıca {extra} tane var: {boxes * per_box} + {extra} = {total}. Toplam {total} {item} vardır.")
    return q, s, total


TEMPLATES: list[Callable[[random.Random], Problem]] = [_add, _sub, _money, _time, _percent, _share, _two_step]


def generate(count: int, seed: int = 0) -> list[dict[str, str]]:
    """`count` distinct problems as {"question", "answer"} rows, deterministic for a seed.

    >>> rows = generate(3, seed=1)
    >>> len(rows), sorted(rows[0])
    (3, ['answer', 'question'])
    """
    r = random.Random(seed)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < count:
        attempts += 1
        if attempts > 50 * count:
            raise ValueError(f"cannot make {count} distinct problems; the templates are too few")
        question, solution, _ = r.choice(TEMPLATES)(r)
        if question not in seen:
            seen.add(question)
            rows.append({"question": question, "answer": solution})
    return rows
