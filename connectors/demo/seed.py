"""The seed rows of the Wuxi (320200) demo back ends: who is insured, pensioned, registered, known.

The seeded people are the DOMAIN.md example ID numbers plus a retired worker whose ID number carries the
old 崇安区 code 320202 (abolished in 2015, valid in ID numbers forever). The headline demo: a Shenzhen
window asks Wuxi for the pension contribution record of ``320213198511200025``. Every store seeds its
tables from here, deterministically: the same file always holds the same seed rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: GB/T 2260 code of the region these back ends belong to.
WUXI = "320200"

#: Social insurance types (险种类型, the national AAE140 codes) and their names.
INSURANCE_TYPES: Mapping[str, str] = {
    "110": "企业职工基本养老保险",
    "120": "机关事业单位基本养老保险",
    "170": "城乡居民基本养老保险",
    "210": "失业保险",
    "310": "职工基本医疗保险",
    "410": "工伤保险",
    "510": "生育保险",
}


# Personal and employer contribution rates of the seeded types.
RATES: Mapping[str, tuple[float, float]] = {"110": (0.08, 0.16), "210": (0.005, 0.005), "310": (0.02, 0.07)}


def in_wuxi(region: str) -> bool:
    """Whether a GB/T 2260 code lies in Wuxi's pooling area (the city or one of its districts)."""
    return region.startswith(WUXI[:4])


# The two seeded employers (also in the enterprise register, ENTERPRISES).
_ZHIHUI = "无锡梁溪智汇信息科技有限公司"
_JINGGONG = "无锡新吴精工机械有限公司"


@dataclass(frozen=True)
class Insured:
    """A person insured in Wuxi, and how their contribution base grew (adjusted every July)."""

    id_no: str
    employer: str
    first_month: str
    last_month: str
    first_base: int
    yearly_growth: float
    status: str


INSURED = (
    Insured("320213198511200025", _ZHIHUI, "2008-07", "2026-10", 2400, 0.08, "正常参保"),
    Insured("44030419900307123X", _ZHIHUI, "2015-09", "2026-10", 4800, 0.06, "正常参保"),
    Insured("370202200101010456", _JINGGONG, "2023-07", "2026-10", 4500, 0.05, "正常参保"),
    Insured("320202195806150018", _JINGGONG, "1993-01", "2018-06", 240, 0.12, "已退休"),
)

#: ID numbers of the seeded people: every person item answers for each of them.
SEEDED_PERSONS: tuple[str, ...] = tuple(p.id_no for p in INSURED)

# id_no, benefit start month, monthly pension, last certified on
PENSIONERS = (("320202195806150018", "2018-07", 3856.40, "2026-03-18"),)

# id_no, insurance type name, status
MEDICAL = (
    ("320213198511200025", "职工基本医疗保险", "正常参保"),
    ("44030419900307123X", "职工基本医疗保险", "正常参保"),
    ("370202200101010456", "职工基本医疗保险", "正常参保"),
    ("320202195806150018", "职工基本医疗保险", "退休人员参保"),
)

# id_no, account number, status, balance, monthly deposit (employee + employer), since, last month
HOUSING_FUND = (
    ("320213198511200025", "320200100887123", "正常缴存", 98650.32, 2480.0, "2009-01", "2026-10"),
    ("44030419900307123X", "320200101526604", "正常缴存", 64210.50, 2160.0, "2015-10", "2026-10"),
    ("370202200101010456", "320200102361877", "正常缴存", 12380.00, 960.0, "2023-08", "2026-10"),
    ("320202195806150018", "320200100012958", "封存", 45120.88, 0.0, "1999-01", "2018-06"),
)

# id_no, household (户籍) region, has a criminal record
RESIDENTS = (
    ("320213198511200025", "320213", 0),
    ("44030419900307123X", "440304", 0),
    ("370202200101010456", "370202", 0),
    ("320202195806150018", "320213", 0),
)

# uscc, name, type, legal representative id and name, capital (万元), established, region, authority,
# business scope, status
ENTERPRISES = (
    (
        "91320213MA1MB7H225",
        _ZHIHUI,
        "有限责任公司（自然人投资或控股）",
        "44030419900307123X",
        "李强",
        500,
        "2016-05-18",
        "320213",
        "无锡市梁溪区市场监督管理局",
        "信息技术咨询服务；软件开发；信息系统集成服务",
        "存续",
    ),
    (
        "91320214135896270C",
        _JINGGONG,
        "有限责任公司",
        "320202195806150018",
        "陈建国",
        2000,
        "1998-04-09",
        "320214",
        "无锡市新吴区市场监督管理局",
        "通用机械零部件制造；金属切削加工",
        "存续",
    ),
)

#: Unified social credit codes of the seeded enterprises: every enterprise item answers for each.
SEEDED_ENTERPRISES: tuple[str, ...] = tuple(e[0] for e in ENTERPRISES)

# uscc, unit account number, status, deposit ratio (%), employees, opened on
HOUSING_FUND_UNITS = (("91320213MA1MB7H225", "3202000088172", "正常缴存", 12, 36, "2016-07-01"),)
