"""The grader: one case per rule of the foundation issue."""

from fractions import Fraction

import pytest

from gsm8k_tr.grading.answers import (
    answer_block,
    canonical,
    extract_answer,
    is_correct,
    is_correct_flexible,
    parse_gold,
)


def box(text: str) -> str:
    return f"<sebep>\nhesap\n</sebep>\n<cevap>\n{text}\n</cevap>"


CORRECT = [
    # (answer text, gold, what it checks)
    ("1.250", "1250", "Turkish thousands grouping"),
    ("1,250", "1250", "English thousands grouping"),
    ("12,5", "12.5", "Turkish decimal comma"),
    ("1.250,5", "1250.5", "Turkish grouping with decimal comma"),
    ("1,250.5", "1250.5", "English grouping with decimal point"),
    ("1.000.000", "1000000", "several Turkish groups"),
    ("1,000,000", "1000000", "several English groups"),
    ("1.25", "1.25", "English decimal point is a valid reading of 1.25"),
    ("-5", "-5", "ASCII minus"),
    ("−5", "-5", "Unicode minus"),
    ("3/4", "0.75", "fraction equals decimal gold"),
    ("2 1/2", "2.5", "mixed number"),
    ("%25", "25", "percent before"),
    ("25%", "25", "percent after"),
    ("$18", "18", "dollar sign"),
    ("18 dolar", "18", "currency word"),
    ("45 TL'dir", "45", "TL with Turkish suffix"),
    ("100₺", "100", "lira sign"),
    ("72'dir", "72", "apostrophe suffix"),
    ("7'si", "7", "apostrophe suffix on one digit"),
    ("5 metre", "5", "units"),
    ("**8**", "8", "markdown bold"),
    ("\\boxed{8}", "8", "LaTeX boxed"),
    ("\\frac{3}{4}", "0.75", "LaTeX fraction"),
    ("üç", "3", "Turkish number word"),
    ("yetmiş iki", "72", "two-word Turkish number"),
    ("bin iki yüz", "1200", "Turkish thousands in words"),
    ("iki buçuk", "2.5", "Turkish 'and a half'"),
    ("Cevap yetmiş ikidir", "72", "number word with copula suffix"),
    ("1250", "1,250", "gold written with English grouping"),
    ("1250", "1.250", "gold written with Turkish grouping"),
    ("Önce 10 sonra 72", "72", "the last number is the answer"),
    ("3 + 4 = 7 elma", "7", "expression: final number counts"),
    ("1 milyon kadın", "1000000", "a scale word after the digits (a real GSM8K-TR solution's answer)"),
    ("1,5 milyon", "1500000", "a decimal comma before a scale word"),
    ("2 milyara", "2000000000", "a scale word with a case ending"),
    ("5 bin TL", "5000", "thousands as a word after the digits"),
    ("5 bini", "5000", "'bin' with a case ending"),
    ("BEŞ: 6 MİLYON", "6000000", "a scale word in capitals with the dotted İ"),
    ("2 million", "2000000", "an English scale word"),
    ("2½ milyon.", "2500000", "a vulgar fraction before a scale word, a full stop after it"),
    ("2 bin 500 TL", "2500", "thousands and a remainder, as Turkish writes amounts"),
    ("2 milyon 500 bin", "2500000", "millions and thousands"),
    ("1 milyon 200 bin 300", "1200300", "three groups"),
    ("-2 bin 500", "-2500", "a sign before a compound amount"),
    ("2 buçuk saat", "2.5", "'buçuk' after digits"),
    ("2 buçuk milyon", "2500000", "'buçuk' before a scale word"),
    ("bir buçuk milyon", "1500000", "'buçuk' before a scale word, in words"),
    ("yarım milyon", "500000", "'yarım' before a scale word"),
    ("2 ½ saat", "2.5", "a vulgar fraction one space after the digits"),
    ("½", "0.5", "a vulgar fraction alone"),
    ("3 elmanın ½'si", "0.5", "a vulgar fraction after the last digits is the last number"),
    ("5 bin 1.500", "1500", "a remainder of a thousand or more is its own number"),
    ("10 000 TL", "10000", "thousands grouped by a space"),
    ("1 250 000", "1250000", "several groups one space apart"),
    ("1\u00a0250,5", "1250.5", "a no-break space between groups, a decimal comma"),
    ("-1 250", "-1250", "a sign before space-grouped thousands"),
    ("2 100 liralık", "100", "two hundred-lira notes: the last group alone stays a reading"),
    ("2 bin beş yüz", "2500", "thousands in digits, the rest in words"),
    ("2 milyon beş yüz bin", "2500000", "millions in digits, thousands in words"),
    ("5 bin bir sepette", "5000", "a lone 'bir' after a scale word may be the article"),
    ("5 bin bir", "5001", "... or the rest of the amount"),
    ("2 BİN 500", "2500", "a capital scale word with the dotted İ before the rest of the amount"),
    ("2 MİLYON BEŞ YÜZ BİN", "2500000", "capitals throughout"),
    ("İki yüz elli", "250", "a number word opening a sentence with the dotted İ"),
    ("ALTI", "6", "the dotless I in capitals"),
    ("Üçte bir", str(Fraction(1, 3)), "a Turkish fraction: denominator in the locative, then the numerator"),
    ("Pastanın beşte dördünü aldı.", "0.8", "a numerator with the possessive and a case ending, a softened stem"),
    ("on ikide yedisi", str(Fraction(7, 12)), "a two-word denominator"),
    ("yirmide on üçü", "0.65", "a two-word numerator ended by its possessive"),
    ("eksi dörtte üç", "-0.75", "a negative fraction"),
    ("eksi 5", "-5", "the sign in a word before digits"),
    ("Sıcaklık EKSİ 5 derece", "-5", "the sign word in capitals, after a word that is no number"),
    ("eksi 2 bin 500", "-2500", "a spelled sign before a compound amount"),
    ("eksi 0,5", "-0.5", "a spelled sign before a decimal comma"),
    ("10 eksi 5", "5", "'eksi' after a number subtracts, as '10 - 5' does"),
    ("on eksi beş", "5", "'eksi' after a number word subtracts too"),
    ("on eksi 5", "5", "a number word, 'eksi', then digits"),
    ("-2 1/2", "-2.5", "a negative mixed number"),
    ("-$5", "-5", "a sign before a currency sign, as '$-5' reads"),
    ("Kâr: -₺12", "-12", "a sign before the lira sign"),
    ("-$ 10 000", "-10000", "a sign, a currency sign and a space before space-grouped thousands"),
    ("eksi $5", "-5", "a spelled sign before a currency sign"),
    ("-%5", "-5", "a sign before Turkish's percent sign"),
    ("-(5)", "-5", "a sign before a bracket"),
    ("onbeş", "15", "number words run together, as informal Turkish writes them"),
    ("İkiyüzellidir", "250", "three words run together with a copula, capitalised"),
    ("2 bin beşyüz", "2500", "the rest after a scale word run together"),
    ("binbir", "1001", "a scale and a unit run together"),
    ("Otobüse beş kişi bindi.", "5", "the number before 'bindi' (got on)"),
    ("Toplam bindir.", "1000", "'bindir' is 'is a thousand'"),
    ("üç virgül beş", "3.5", "'virgül' (comma) is Turkish's decimal point, spoken"),
    ("Eksi on iki virgül yetmiş beşTİR", "-12.75", "a signed decimal in words, with a copula"),
    ("iki virgül sıfır beş", "2.05", "the zeros after the point come before the decimals"),
    ("yüzde iki virgül beş", "2.5", "a spoken decimal percentage"),
    ("üç virgül, yani üç", "3", "a point with no decimals after it leaves the number whole"),
    ("bir virgül iki milyon", "1200000", "a scale word after the decimals scales the whole number"),
    ("Her çocuk üçer elma aldı.", "3", "a distributive ('three each') is its number"),
    ("on ikişer", "12", "a compound distributive: twelve each"),
    ("3 virgül 5", "3.5", "'virgül' spoken between digits is the decimal point"),
    ("Zarar: -12 VİRGÜL 250 TL", "-12.25", "a signed spoken decimal with three decimals, in capitals"),
    ("2 virgül 5 milyon", "2500000", "a scale word after digits with a spoken point"),
]

WRONG = [
    ("7.2", "72", "decimal 7.2 is not 72"),
    ("720", "72", "720 is not 72"),
    ("5", "-5", "wrong sign"),
    ("-5", "5", "negative prediction for a positive gold"),
    ("3/5", "0.75", "a different fraction"),
    ("72 73 74", "72", "a number spray: only the last counts"),
    ("1,25", "1250", "1,25 can never be 1250"),
    ("yok", "72", "no number at all"),
    ("", "0", "empty answer block"),
    ("%25", "0.25", "percent is not rescaled"),
    ("1 milyon", "1", "a scale word is part of the number"),
    ("5 bina", "5000", "'bina' (buildings) is not 'bin'"),
    ("5 binici", "5000", "'binici' (riders) is not 'bin'"),
    ("5 milyon elma ve 3", "3000000", "a scale word belongs to its own number, not to the last"),
    ("Cevap 5. Bin kişi geldi", "5000", "a full stop ends the number's sentence: the next one's 'Bin' is not its scale"),
    ("2 bin 500", "500", "the remainder alone is not the amount"),
    ("5 bin 1.500", "5001.5", "a remainder of a thousand or more is its own number, in either reading"),
    ("5 bine 3", "5003", "only the bare scale word joins two numbers"),
    ("5 bin\n500", "5500", "a compound amount is written on one line"),
    ("10-2 bin 500", "-2500", "a minus after a digit is subtraction"),
    ("eksi 5", "5", "a spelled sign is read"),
    ("10 eksi 5", "-5", "'eksi' after digits subtracts"),
    ("eksik 5", "-5", "'eksik' (missing) is no sign"),
    ("-2 1/2", "-1.5", "a negative mixed number is not its whole plus the fraction"),
    ("-$5", "5", "a sign before a currency sign is read"),
    ("10 - $5", "-5", "a minus between two amounts subtracts"),
    ("(10)-(5)", "-5", "a minus between two brackets subtracts"),
    ("beşon", "10", "stems that make no single number are no number run together"),
    ("yüzyıl", "100", "'yüzyıl' (century) is no number"),
    ("yüzbinlerce", "100", "stems with more than a copula after them are no number"),
    ("Otobüse beş kişi bindi.", "1000", "'bindi' is 'got on', not 'was a thousand'"),
    ("2 buçuk saat", "2", "'buçuk' adds a half"),
    ("1234 567", "1234567", "a head of four digits is no group of thousands"),
    ("72 73 074", "7273074", "groups after the head have three digits"),
    ("10 000", "10", "the head alone is not the number"),
    ("3 bine beş", "3005", "only the bare scale word takes the rest in words"),
    ("5 bin\nbeş yüz", "5500", "the rest in words is on the same line"),
    ("2 bin beş yüz", "2000", "the words after the scale word are part of the amount"),
    ("Üçte bir", "1", "'üçte bir' is a third, not the 'bir' of it"),
    ("beşte ikisi", "2", "the numerator alone is not the fraction"),
    ("yüzde elli", "0.5", "'yüzde' is a percentage: the number after it, as GSM8K writes one"),
    ("Onda bir kalem var", "0.1", "'onda' is also 'at him': not read as a tenth"),
    ("onu gördüm", "10", "a possessive-looking 'onu' (him) is no number without a denominator before it"),
    ("üç virgül beş", "5", "the decimals alone are not the number"),
    ("iki virgül sıfır beş", "2.5", "a zero after the point is a decimal"),
    ("üç virgül beş iki", "3.52", "the decimals are one number: 'beş iki' is two"),
    ("bir virgül iki milyon", "1.2", "a scale word after the decimals is part of the number"),
    ("Balıklar teşhir tankına yüzer.", "100", "'yüzer' (swims) is no distributive"),
    ("3 virgül 5", "5", "the digits after a spoken point are not the number"),
    ("5 virgül 250", "5250", "the digits after a spoken point never group thousands"),
    ("1.000 virgül 5", "1000.5", "a spoken point is read between plain digits only"),
]


@pytest.mark.parametrize("text,gold,why", CORRECT, ids=[c[2] for c in CORRECT])
def test_correct_answers(text: str, gold: str, why: str) -> None:
    assert is_correct(box(text), gold), why


@pytest.mark.parametrize("text,gold,why", WRONG, ids=[c[2] for c in WRONG])
def test_wrong_answers(text: str, gold: str, why: str) -> None:
    assert not is_correct(box(text), gold), why


def _turkish_upper(text: str) -> str:
    return text.replace("i", "İ").replace("ı", "I").upper()


SCALES = {"bin": 10**3, "milyon": 10**6, "milyar": 10**9, "trilyon": 10**12, "thousand": 10**3, "million": 10**6}


@pytest.mark.parametrize("case", [str.lower, str.upper, str.title, _turkish_upper], ids=["lower", "upper", "title",
                                                                                         "turkish-upper"])
@pytest.mark.parametrize("word", SCALES)
def test_scale_words_in_any_case(word: str, case) -> None:
    # Python lower-cases the dotted "İ" to "i" and a combining dot: "2 BİN 500" once raised KeyError in the grader.
    scale, written = SCALES[word], case(word)
    assert is_correct(box(f"2 {written} 500"), 2 * scale + 500), written
    assert is_correct(box(f"2 {written}"), 2 * scale), written
    assert is_correct(box(f"2 buçuk {written}"), 5 * scale // 2), written
    assert not is_correct(box(f"2 {written}e 3"), 2 * scale + 3), written
    if word not in ("thousand", "million"):
        assert is_correct(box(f"2 {written} {case('beş')}"), 2 * scale + 5), written


def test_letters_that_only_case_folding_matches_never_raise() -> None:
    # re's IGNORECASE matches "ſ" (long s) to "s" and "İ" to "i": a scale word spelled so once raised KeyError.
    for text in ("2 thouſand 500", "2 thouſand", "2 bİn 500", "2 mıLYON 500"):
        assert is_correct(box(text), 2500) in (True, False), text


BLOCKS = [
    # (completion, gold, expected, what it checks)
    ("<cevap>5</cevap> sonra <cevap>7</cevap>", "7", True, "last block wins"),
    ("<cevap>5</cevap> sonra <cevap>7</cevap>", "5", False, "earlier block is ignored"),
    ("Cevap 72.", "72", False, "no fallback to text outside the block"),
    ("<sebep>\n72\n</sebep>\n<cevap>\n", "72", False, "reasoning is not the answer"),
    ("<cevap>\n72 elma", "72", True, "unclosed final block runs to the end"),
    ("<cevap>72</cevap> ek metin 9", "72", True, "text after the block is ignored"),
    ("<cevap>1</cevap><cevap>", "1", False, "an empty unclosed final block is the answer"),
]


@pytest.mark.parametrize("completion,gold,expected,why", BLOCKS, ids=[c[3] for c in BLOCKS])
def test_answer_block_rules(completion: str, gold: str, expected: bool, why: str) -> None:
    assert is_correct(completion, gold) is expected, why


def test_gold_types_and_flexible_extract() -> None:
    assert is_correct(box("18"), 18) and is_correct(box("2.5"), 2.5) and is_correct(box("1/3"), Fraction(1, 3))
    assert not is_correct(box("18"), "not a number")  # an unreadable gold never matches
    assert is_correct_flexible("Toplam 5 elma, cevap 18 dolar.", "18")
    assert not is_correct_flexible("Toplam 18 elma, 5 kaldı.", "18")


def test_parse_gold_and_canonical() -> None:
    assert parse_gold("#### 1,250") == 1250  # grouping wins for gold
    assert parse_gold("0.5") == Fraction(1, 2)
    assert parse_gold("-3") == -3
    with pytest.raises(ValueError):
        parse_gold("yok")
    assert [canonical(Fraction(v)) for v in ("1250", "12.5", "-0.25")] == ["1250", "12.5", "-0.25"]
    assert canonical(Fraction(2, 3)) == "2/3"


def test_extract_and_block_helpers() -> None:
    assert answer_block("<yanit>4</yanit>", "yanit") == "4"
    assert extract_answer("<cevap>x</cevap>") is None
    assert extract_answer("no tags") is None
