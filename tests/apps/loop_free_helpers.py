"""A user module: helpers whose lines the attribution tests expect."""

import sys


def run_with(callback):
    return callback(1)  # CALL_LINE


CALL_LINE = 7


def where_am_i(probe):
    return probe(0)  # WHERE_LINE


WHERE_LINE = 14
