"""BaoStock's wire protocol as the 0.9.4 client speaks it: framing, message types, error codes.

Request (client -> server), one line:
    header + body + "\\x01" + str(crc32(header + body)) + "\\n"
    header = "00.9.40" "\\x01" <2-char type> "\\x01" <10-digit body length in characters>
Response (server -> client):
    header + body + "\\x01" + crc + "<![CDATA[]]>\\n"
For the compressed types (96, 99, 9B, 9D) the body + "\\x01" + crc is zlib-compressed and the
header length is the compressed byte count. Every response body starts with
error_code, error_msg, method, user_id; paged ones go on with cur_page, per_page and
{"record":[[...]]} (no whitespace: the client deletes all of it before json.loads).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

CLIENT_VERSION = "00.9.40"
SPLIT = "\x01"
TERMINATOR = b"<![CDATA[]]>\n"
HEADER_LENGTH = 21
COMPRESSED_TYPES = frozenset({"96", "99", "9B", "9D"})

# Error codes, as in baostock.common.contants.
SUCCESS = "0"
NO_LOGIN = "10001001"  # 用户未登陆
BAD_USER_OR_PASSWORD = "10001002"  # 用户名或密码错误
BLACKLIST_ERROR_CODE = "10001011"  # 黑名单用户 (BSERR_BLACKLIST_USER)
# The simulator's rate limiter answers like BaoStock's blacklist: same code, message says 黑名单.
RATE_LIMIT_ERROR_CODE = BLACKLIST_ERROR_CODE
PARAM_ERROR = "10004006"  # 参数错误: bad frequency, bad adjustflag, bad paging
START_DATE_ERROR = "10004007"  # 起始日期格式不正确
END_DATE_ERROR = "10004008"  # 截止日期格式不正确
START_AFTER_END = "10004009"  # 起始日期大于终止日期
DATE_ERROR = "10004010"  # 日期格式不正确
CODE_INVALID = "10004011"  # 无效的证券代码
FIELD_INVALID = "10004012"  # 无效的指标
FIELD_REPEATED = "10004018"  # 指标重复
MESSAGE_ERROR = "10004019"  # 消息格式不正确 (bad header, length or CRC)
MESSAGE_TYPE_ERROR = "10004020"  # 错误的消息类型
# Injected transient failures use the server's generic "system error": retrying may succeed.
TRANSIENT_ERROR_CODE = "10005001"  # 系统级别错误

ERROR_MESSAGES = {
    NO_LOGIN: "用户未登录，请先登录。",
    BAD_USER_OR_PASSWORD: "用户名或密码错误。",
    BLACKLIST_ERROR_CODE: "黑名单用户，请联系管理员。",
    PARAM_ERROR: "参数错误，请检查。",
    START_DATE_ERROR: "起始日期格式不正确，请修改。",
    END_DATE_ERROR: "截止日期格式不正确，请修改。",
    START_AFTER_END: "起始日期大于终止日期，请修改。",
    DATE_ERROR: "日期格式不正确，请修改。",
    CODE_INVALID: "无效的证券代码，请检查。",
    FIELD_INVALID: "无效的指标，请检查。",
    FIELD_REPEATED: "指标重复，请检查。",
    MESSAGE_ERROR: "消息格式不正确。",
    MESSAGE_TYPE_ERROR: "错误的消息类型。",
    TRANSIENT_ERROR_CODE: "系统级别错误，请稍后再试。",
}
RATE_LIMIT_MESSAGE = "访问过于频繁，已被列入黑名单，请稍后再试。"

# request type -> (response type, method name the client sends)
MESSAGE_TYPES: dict[str, tuple[str, str]] = {
    "00": ("01", "login"),
    "02": ("03", "logout"),
    "13": ("14", "query_dividend_data"),
    "15": ("16", "query_adjust_factor"),
    "17": ("18", "query_profit_data"),
    "19": ("20", "query_operation_data"),
    "21": ("22", "query_growth_data"),
    "23": ("24", "query_dupont_data"),
    "25": ("26", "query_balance_data"),
    "27": ("28", "query_cash_flow_data"),
    "29": ("30", "query_performance_express_report"),
    "31": ("32", "query_forecast_report"),
    "33": ("34", "query_trade_dates"),
    "35": ("36", "query_all_stock"),
    "45": ("46", "query_stock_basic"),
    "47": ("48", "query_deposit_rate_data"),
    "49": ("50", "query_loan_rate_data"),
    "51": ("52", "query_required_reserve_ratio_data"),
    "53": ("54", "query_money_supply_data_month"),
    "55": ("56", "query_money_supply_data_year"),
    "59": ("60", "query_stock_industry"),
    "61": ("62", "query_hs300_stocks"),
    "63": ("64", "query_sz50_stocks"),
    "65": ("66", "query_zz500_stocks"),
    "95": ("96", "query_history_k_data_plus"),
    "98": ("99", "query_daily_history_k_AStock"),
    "9C": ("9D", "query_daily_adjust_factor"),
}


class ProtocolError(ValueError):
    """A request line that is not a well-formed BaoStock message."""


@dataclass(frozen=True)
class Request:
    msg_type: str
    body: tuple[str, ...]  # body split on \x01: method, user_id, ...

    @property
    def method(self) -> str:
        return self.body[0] if self.body else ""

    @property
    def user_id(self) -> str:
        return self.body[1] if len(self.body) > 1 else ""


def header(msg_type: str, length: int) -> str:
    return f"{CLIENT_VERSION}{SPLIT}{msg_type}{SPLIT}{length:010d}"


def encode_request(msg_type: str, body: Sequence[str]) -> bytes:
    """A request exactly as the baostock client builds it (used by tests and raw clients)."""
    text = SPLIT.join(body)
    head_body = header(msg_type, len(text)) + text
    return (head_body + SPLIT + str(zlib.crc32(head_body.encode())) + "\n").encode()


def decode_request(line: bytes) -> Request:
    """Parse one request line (terminated by \\n); checks header, length and CRC."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("request is not UTF-8") from exc
    text = text.rstrip("\n")
    if len(text) < HEADER_LENGTH:
        raise ProtocolError("request shorter than a header")
    head = text[:HEADER_LENGTH]
    parts = head.split(SPLIT)
    if len(parts) != 3 or not parts[2].isdigit():
        raise ProtocolError(f"bad header {head!r}")
    body, sep, crc = text[HEADER_LENGTH:].rpartition(SPLIT)
    if not sep:
        raise ProtocolError("request has no CRC")
    if int(parts[2]) != len(body):
        raise ProtocolError(f"header says {parts[2]} characters, body has {len(body)}")
    if crc != str(zlib.crc32((head + body).encode())):
        raise ProtocolError("CRC mismatch")
    return Request(msg_type=parts[1], body=tuple(body.split(SPLIT)))


def encode_response(msg_type: str, body: Sequence[str]) -> bytes:
    """Frame a response body (list of fields) for the client, compressing when the type says so."""
    text = SPLIT.join(body)
    if msg_type in COMPRESSED_TYPES:
        crc = zlib.crc32(text.encode())
        # The client drops the last character of the decompressed text: the CRC absorbs it.
        # Level 1: the client only decompresses, and level 6 cost 5x the CPU for 20% fewer bytes.
        payload = zlib.compress((text + SPLIT + str(crc)).encode(), 1)
        return header(msg_type, len(payload)).encode() + payload + TERMINATOR
    head_body = header(msg_type, len(text)) + text
    crc = zlib.crc32(head_body.encode())
    return (head_body + SPLIT + str(crc)).encode() + TERMINATOR


def decode_response(data: bytes) -> tuple[str, list[str]]:
    """(msg type, body fields) of a full response; the inverse of encode_response for tests."""
    if not data.endswith(TERMINATOR):
        raise ProtocolError("response is not terminated")
    head = data[:HEADER_LENGTH].decode()
    msg_type, length = head.split(SPLIT)[1], int(head.split(SPLIT)[2])
    if msg_type in COMPRESSED_TYPES:
        text = zlib.decompress(data[HEADER_LENGTH : HEADER_LENGTH + length]).decode()
    else:
        text = data[HEADER_LENGTH : -len(TERMINATOR)].decode()
    body, _, _crc = text.rpartition(SPLIT)
    return msg_type, body.split(SPLIT)


def records_json(rows: Sequence[Sequence[str]]) -> str:
    """The {"record":[[...]]} payload of a page, without any whitespace."""
    return json.dumps({"record": rows}, ensure_ascii=False, separators=(",", ":"))
