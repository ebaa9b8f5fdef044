"""A small English→Turkish lexicon of words that GSM8K questions are made of.

Alignment needs evidence beyond numbers and names: many questions share the
numbers 2, 5 or 10 and nothing else. Each entry maps English word forms to
Turkish stems (matched as word prefixes, because Turkish adds suffixes:
"kurabiyelerin" starts with "kurabiye"). Both sides map to the same concept
key, which becomes one alignment feature.
"""

from __future__ import annotations

import re

from gsm8k_tr.grading.numwords import turkish_lower

# concept: (English forms, Turkish stems)
_ENTRIES: dict[str, tuple[str, str]] = {
    "apple": ("apple apples", "elma"),
    "orange": ("orange oranges", "portakal"),
    "banana": ("banana bananas", "muz"),
    "egg": ("egg eggs", "yumurta"),
    "cookie": ("cookie cookies", "kurabiye"),
    "cake": ("cake cakes cupcake cupcakes", "kek pasta"),
    "pie": ("pie pies", "turta"),
    "candy": ("candy candies", "şeker"),
    "pizza": ("pizza pizzas", "pizza"),
    "bread": ("bread loaf loaves", "ekmek"),
    "milk": ("milk", "süt"),
    "water": ("water", "su"),
    "juice": ("juice", "suyu"),  # "meyve suyu", "portakal suyu"; "meyve" alone is fruit
    "coffee": ("coffee", "kahve"),
    "tea": ("tea", "çay"),
    "chicken": ("chicken chickens hen hens", "tavuk"),
    "cow": ("cow cows", "inek"),
    "dog": ("dog dogs puppy puppies", "köpek"),
    "cat": ("cat cats kitten kittens", "kedi"),
    "fish": ("fish", "balık"),
    "bird": ("bird birds", "kuş"),
    "horse": ("horse horses", "at"),
    "sheep": ("sheep", "koyun"),
    "goat": ("goat goats", "keçi"),
    "pig": ("pig pigs", "domuz"),
    "duck": ("duck ducks", "ördek"),
    "flower": ("flower flowers", "çiçek"),
    "tree": ("tree trees", "ağaç"),
    "seed": ("seed seeds", "tohum"),
    "garden": ("garden gardens", "bahçe"),
    "farm": ("farm farms farmer", "çiftlik çiftçi"),
    "book": ("book books", "kitap"),
    "page": ("page pages", "sayfa"),
    "pencil": ("pencil pencils", "kalem"),
    "pen": ("pen pens", "kalem"),
    "notebook": ("notebook notebooks", "defter"),
    "school": ("school schools", "okul"),
    "class": ("class classes classroom", "sınıf"),
    "student": ("student students pupil pupils", "öğrenci"),
    "teacher": ("teacher teachers", "öğretmen"),
    "test": ("test tests exam exams quiz", "sınav test"),
    "question": ("question questions", "soru"),
    "friend": ("friend friends", "arkadaş"),
    # "erkek kardeş" and "kız kardeş" are two words each; "erkek" and "kız" alone mean boy and girl.
    "sibling": ("brother brothers sister sisters sibling siblings", "kardeş ağabey abi abla"),
    "mother": ("mother mom", "anne"),
    "father": ("father dad", "baba"),
    "son": ("son sons", "oğul oğlu"),
    "daughter": ("daughter daughters", "kızı"),
    "child": ("child children kid kids", "çocuk"),
    "family": ("family", "aile"),
    "people": ("people person", "kişi insan"),
    "car": ("car cars", "araba otomobil"),
    "bus": ("bus buses", "otobüs"),
    "train": ("train trains", "tren"),
    "bike": ("bike bikes bicycle bicycles", "bisiklet"),
    "tire": ("tire tires wheel wheels", "lastik tekerlek"),
    "road": ("road roads street", "yol sokak"),
    "house": ("house houses home", "ev"),
    "room": ("room rooms", "oda"),
    "store": ("store stores shop", "mağaza dükkan market"),
    "money": ("money", "para"),
    "dollar": ("dollar dollars", "dolar"),
    "cent": ("cent cents penny pennies", "sent kuruş"),
    "price": ("price cost costs", "fiyat maliyet"),
    "pay": ("pay pays paid", "öde"),
    "buy": ("buy buys bought", "satın"),  # "satın almak"
    "sell": ("sell sells sold", "sat"),
    "save": ("save saves saved savings", "biriktir"),
    "earn": ("earn earns earned", "kazan"),
    "salary": ("salary wage wages", "maaş ücret"),
    "job": ("job work works worked", "iş çalış"),
    "hour": ("hour hours", "saat"),
    "minute": ("minute minutes", "dakika"),
    "second": ("seconds", "saniye"),
    "day": ("day days daily", "gün"),
    "week": ("week weeks weekly", "hafta"),
    "month": ("month months monthly", "ay"),
    "year": ("year years", "yıl sene"),
    "age": ("age old older younger", "yaş"),
    "mile": ("mile miles", "mil"),
    "meter": ("meter meters metre", "metre"),
    "foot": ("foot feet", "fit ayak"),
    "inch": ("inch inches", "inç"),
    "pound": ("pound pounds", "pound libre"),
    "ounce": ("ounce ounces", "ons"),
    "gallon": ("gallon gallons", "galon"),
    "liter": ("liter liters litre", "litre"),
    "kilogram": ("kilogram kilograms kg", "kilo"),
    "box": ("box boxes", "kutu"),
    "bag": ("bag bags", "çanta torba poşet"),
    "bottle": ("bottle bottles", "şişe"),
    "cup": ("cup cups glass glasses", "bardak fincan"),
    "plate": ("plate plates", "tabak"),
    "ticket": ("ticket tickets", "bilet"),
    "game": ("game games", "oyun maç"),
    "team": ("team teams", "takım"),
    "player": ("player players", "oyuncu"),
    "point": ("point points score", "puan"),  # "sayı" is any count ("çok sayıda")
    "toy": ("toy toys", "oyuncak"),
    "ball": ("ball balls", "top"),
    "marble": ("marble marbles", "bilye misket"),
    "sticker": ("sticker stickers", "çıkartma"),
    "card": ("card cards", "kart"),
    "shirt": ("shirt shirts", "gömlek tişört"),
    "shoe": ("shoe shoes", "ayakkabı"),
    "dress": ("dress dresses", "elbise"),
    "sock": ("sock socks", "çorap"),
    "hat": ("hat hats", "şapka"),
    "window": ("window windows", "pencere"),
    "door": ("door doors", "kapı"),
    "wall": ("wall walls", "duvar"),
    "paint": ("paint painting paints", "boya"),
    "table": ("table tables", "masa"),
    "chair": ("chair chairs", "sandalye"),
    "bed": ("bed beds", "yatak"),
    "phone": ("phone phones", "telefon"),
    "computer": ("computer computers laptop", "bilgisayar"),
    "movie": ("movie movies film", "film"),
    "song": ("song songs", "şarkı"),
    "party": ("party parties", "parti"),
    "gift": ("gift gifts present presents", "hediye"),
    "birthday": ("birthday", "doğum"),  # "doğum günü"; "günü" alone is any day
    "restaurant": ("restaurant restaurants", "restoran lokanta"),
    "meal": ("meal meals dinner lunch breakfast", "yemek"),
    "vegetable": ("vegetable vegetables", "sebze"),
    "tomato": ("tomato tomatoes", "domates"),
    "potato": ("potato potatoes", "patates"),
    "carrot": ("carrot carrots", "havuç"),
    "strawberry": ("strawberry strawberries", "çilek"),
    "grape": ("grape grapes", "üzüm"),
    "lemon": ("lemon lemons lemonade", "limon"),
    "watermelon": ("watermelon watermelons", "karpuz"),
    "chocolate": ("chocolate", "çikolata"),
    "ice cream": ("ice cream", "dondurma"),
    "sandwich": ("sandwich sandwiches", "sandviç"),
    "soda": ("soda", "soda gazoz"),
    "rice": ("rice", "pirinç pilav"),
    "gas": ("gas gasoline fuel", "benzin yakıt"),
    "trip": ("trip trips travel", "yolculuk seyahat gezi"),
    "speed": ("speed mph", "hız"),
    "distance": ("distance", "mesafe uzaklık"),
    "weight": ("weight weighs weigh", "ağırlık"),
    "height": ("height tall", "boy uzunluk"),
    "area": ("area square", "alan kare"),
    "percent": ("percent percentage", "yüzde"),
    "half": ("half", "yarı"),
    "total": ("total", "toplam"),
    "remaining": ("remaining left rest", "kalan"),  # "geri" alone is back
    "more": ("more", "fazla"),
    "less": ("less fewer", "az"),
    "times": ("times", "kat"),
    "each": ("each every", "her"),
    "box_office": ("sale sales discount", "indirim satış"),
    "rent": ("rent", "kira"),
    "tax": ("tax", "vergi"),
    "bill": ("bill", "fatura"),  # "hesap" starts "hesapla" (calculate)
    "shelf": ("shelf shelves", "raf"),
    "necklace": ("necklace necklaces", "kolye"),
    "ring": ("ring rings", "yüzük"),
    "bracelet": ("bracelet bracelets", "bilezik"),
    "jar": ("jar jars", "kavanoz"),
    "bucket": ("bucket buckets", "kova"),
    "pool": ("pool pools", "havuz"),
    "beach": ("beach", "plaj sahil"),
    "snow": ("snow", "kar"),
    "rain": ("rain", "yağmur"),
    "sun": ("sun", "güneş"),
    "tv": ("tv television", "televizyon"),
    "marathon": ("marathon", "maraton"),
    "run": ("run runs ran running", "koş"),
    "walk": ("walk walks walked walking", "yürü"),
    "read": ("read reads reading", "oku"),
    "write": ("write writes wrote", "yaz"),
    "elevator": ("elevator floor floors", "asansör kat"),
    "soap": ("soap", "sabun"),
    "chlorine": ("chlorine", "klor"),
    "quarterback": ("quarterback pass passes", "pas"),
    "sloth": ("sloth", "tembel"),
    "aquarium": ("aquarium", "akvaryum"),
    "calligraphy": ("calligraphy", "kaligrafi"),
    "dance": ("dance dancing", "dans"),
    "shelter": ("shelter", "barınak"),
    "buyer": ("buyer buyers customer customers", "alıcı müşteri"),
    "employee": ("employee employees worker workers", "çalışan işçi"),
    "manager": ("manager managers", "müdür yönetici"),
    "clerk": ("clerk clerks", "tezgahtar"),
    "popsicle": ("popsicle popsicles", "buzlu"),
    "jewelry": ("jewelry", "mücevher"),
    "stamp": ("stamp stamps", "pul"),
    "coin": ("coin coins", "madeni"),  # "madeni para"; "bozuk" alone is broken
    "candle": ("candle candles", "mum"),
    "tile": ("tile tiles", "fayans karo"),
    "fence": ("fence fences", "çit"),
    "rope": ("rope", "halat ip"),
    "sugar": ("sugar", "şeker"),
    "flour": ("flour", "un"),
    "butter": ("butter", "tereyağı"),
    "cheese": ("cheese", "peynir"),
    "meat": ("meat beef steak", "et"),
    "soup": ("soup", "çorba"),
    # Days and months: capitalised in both languages, so they are kept out of names and matched here.
    "monday": ("monday mondays", "pazartesi"),
    "tuesday": ("tuesday tuesdays", "salı"),
    "wednesday": ("wednesday wednesdays", "çarşamba"),
    "thursday": ("thursday thursdays", "perşembe"),
    "friday": ("friday fridays", "cuma"),
    "saturday": ("saturday saturdays", "cumartesi"),
    "sunday": ("sunday sundays", "pazar"),
    "january": ("january", "ocak"),
    "february": ("february", "şubat"),
    "april": ("april", "nisan"),
    "june": ("june", "haziran"),
    "july": ("july", "temmuz"),
    "august": ("august", "ağustos"),
    "september": ("september", "eylül"),
    "october": ("october", "ekim"),
    "november": ("november", "kasım"),
    "december": ("december", "aralık"),
}
# ("May" and "March" are left out: as English verbs they would be read as months.)
_CALENDAR = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "january", "february",
             "april", "june", "july", "august", "september", "october", "november", "december")
# Lower-case day and month words of both languages: capitalised, but not names.
WEEKDAYS_AND_MONTHS = frozenset(w for c in _CALENDAR for w in " ".join(_ENTRIES[c]).split())

_EN_INDEX: dict[str, str] = {}
_TR_INDEX: dict[str, str] = {}
for _concept, (_en, _tr) in _ENTRIES.items():
    for _form in _en.split():
        _EN_INDEX.setdefault(_form, _concept)
    for _stem in _tr.split():
        # Stems shorter than 3 letters ("at", "su") would match too many words
        # as prefixes; they must match the whole word.
        _TR_INDEX.setdefault(_stem, _concept)

_WORD = re.compile(r"[^\W\d_]+")
_MAX_STEM = max(len(stem) for stem in _TR_INDEX)


def english_concepts(text: str) -> set[str]:
    """Concepts named by English words in `text`."""
    return {_EN_INDEX[w] for w in _WORD.findall(text.lower()) if w in _EN_INDEX}


def turkish_concepts(text: str) -> set[str]:
    """Concepts named by Turkish words in `text` (a stem matches a word's start)."""
    found: set[str] = set()
    for word in _WORD.findall(turkish_lower(text)):
        if word in _TR_INDEX:
            found.add(_TR_INDEX[word])
            continue
        for size in range(min(len(word) - 1, _MAX_STEM), 2, -1):
            concept = _TR_INDEX.get(word[:size])
            if concept is not None:
                found.add(concept)
                break
    return found
