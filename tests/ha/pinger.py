"""Run in the probe network namespace: send an ICMP echo request to ADDR every INTERVAL seconds (forgetting the
neighbour entry of ADDR first unless --keep-arp) until one is answered or TIMEOUT passes; print the monotonic time
of the first answer (the same clock as the harness: CLOCK_MONOTONIC is system-wide), exit 1 on timeout.
Standard library only (no ping binary on the host): a raw ICMP socket, as root."""
import argparse
import os
import select
import socket
import struct
import subprocess
import sys
import time


def checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xffff)
    total += total >> 16
    return ~total & 0xffff


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('addr')
    parser.add_argument('--interval', type=float, default=0.05)
    parser.add_argument('--timeout', type=float, default=120)
    parser.add_argument('--keep-arp', action='store_true')
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xffff
    deadline = time.monotonic() + args.timeout
    seq = 0
    while time.monotonic() < deadline:
        if not args.keep_arp:
            subprocess.run(['ip', 'neigh', 'flush', 'to', args.addr], capture_output=True, check=False)
        seq = (seq + 1) & 0xffff
        header = struct.pack('!BBHHH', 8, 0, 0, ident, seq)
        payload = b'vs19-failover'
        packet = struct.pack('!BBHHH', 8, 0, checksum(header + payload), ident, seq) + payload
        sock.sendto(packet, (args.addr, 0))
        end = time.monotonic() + args.interval
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, _w, _x = select.select([sock], [], [], left)
            if not ready:
                break
            data, peer = sock.recvfrom(2048)
            ihl = (data[0] & 0x0f) * 4
            kind, _code, _sum, rid, _rseq = struct.unpack('!BBHHH', data[ihl:ihl + 8])
            if peer[0] == args.addr and kind == 0 and rid == ident:
                print('%.6f' % time.monotonic())
                return 0
    return 1


if __name__ == '__main__':
    sys.exit(main())
