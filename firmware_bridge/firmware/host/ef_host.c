/*
 * ef_host: runs the C reference (efproto) on a Linux host so the tests can check it against the
 * Python bridge byte for byte.
 *
 *   ef_host selftest            CRC check value, COBS edge cases, encode/decode round trips
 *   ef_host vectors             print "name hex" for every shared test vector, encoded in C
 *   ef_host decode              read hex lines on stdin, print each frame or error decoded in C
 *   ef_host mcu FD FRAMES       act as an MCU on file descriptor FD (a pty master): send a boot
 *                               status and FRAMES sample frames, answer commands with acks;
 *                               print "cmd ..." for each command; exit after a REBOOT command
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "efproto.h"

static void print_hex(const uint8_t *p, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) printf("%02x", p[i]);
}

static int emit(const char *name, uint8_t type, uint16_t seq, const uint8_t *payload, size_t len) {
    uint8_t wire[EF_MAX_WIRE];
    size_t n = ef_encode_frame(type, seq, payload, (uint16_t)len, wire, sizeof wire);
    if (n == 0) return 1;
    printf("%s ", name);
    print_hex(wire, n);
    printf("\n");
    return 0;
}

/* The shared test vectors (firmware_bridge/firmware/vectors.json), built from fields in C. */
static int vectors(void) {
    uint8_t p[EF_MAX_PAYLOAD];
    const float two[] = {1.0f, -2.0f, 0.5f, 3.25f};
    const float zero[] = {0.0f};
    char long_text[261];
    int bad = 0;
    memset(long_text, 'x', 260);
    long_text[260] = '\0';
    bad |= emit("samples", EF_MSG_SAMPLES, 1, p, ef_samples_payload(1500000u, 10000u, 2, 2, two, p, sizeof p));
    bad |= emit("samples_zero", EF_MSG_SAMPLES, 0, p, ef_samples_payload(0u, 0u, 1, 1, zero, p, sizeof p));
    bad |= emit("status", EF_MSG_STATUS, 2, p, ef_status_payload(123456u, 100.0f, 0u, EF_STATUS_FLAG_BOOT, p, sizeof p));
    bad |= emit("log", EF_MSG_LOG, 3, p, ef_log_payload(2, "hello", p, sizeof p));
    bad |= emit("log_long", EF_MSG_LOG, 9, p, ef_log_payload(0, long_text, p, sizeof p));
    bad |= emit("set_rate", EF_MSG_COMMAND, 0, p, ef_set_rate_payload(250.0f, p, sizeof p));
    bad |= emit("actuator", EF_MSG_COMMAND, 1, p, ef_actuator_payload(2, 0.75f, p, sizeof p));
    bad |= emit("reboot", EF_MSG_COMMAND, 2, p, ef_bare_command_payload(EF_CMD_REBOOT, p, sizeof p));
    bad |= emit("ping", EF_MSG_COMMAND, 3, p, ef_bare_command_payload(EF_CMD_PING, p, sizeof p));
    bad |= emit("ack", EF_MSG_ACK, 4, p, ef_ack_payload(0, EF_CMD_SET_RATE, p, sizeof p));
    bad |= emit("nack", EF_MSG_NACK, 5, p, ef_nack_payload(1, EF_CMD_ACTUATOR, EF_NACK_BAD_ARGS, p, sizeof p));
    bad |= emit("inference", EF_MSG_INFERENCE, 6, p, ef_inference_payload(2000000u, 3, 0.875f, p, sizeof p));
    return bad;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static const char *error_name(int r) {
    switch (r) {
    case EF_ERR_COBS: return "bad-cobs";
    case EF_ERR_SHORT: return "truncated";
    case EF_ERR_LONG: return "too-long";
    case EF_ERR_CRC: return "crc-mismatch";
    case EF_ERR_VERSION: return "bad-version";
    case EF_ERR_LENGTH: return "bad-length";
    case EF_ERR_TYPE: return "unknown-type";
    default: return "?";
    }
}

/* One line of hex per input chunk; one output line per frame or error it completes. */
static int decode(void) {
    static ef_decoder dec;
    static char line[1 << 16];
    ef_frame frame;
    ef_decoder_init(&dec);
    while (fgets(line, sizeof line, stdin) != NULL) {
        size_t i;
        for (i = 0; hexval(line[i]) >= 0 && hexval(line[i + 1]) >= 0; i += 2) {
            int r = ef_decoder_push(&dec, (uint8_t)(hexval(line[i]) * 16 + hexval(line[i + 1])), &frame);
            if (r == EF_FRAME) {
                printf("frame v=%u type=%u seq=%u len=%u payload=", frame.version, frame.type,
                       frame.seq, frame.len);
                print_hex(frame.payload, frame.len);
                printf("\n");
            } else if (r < 0) {
                printf("error %s\n", error_name(r));
            }
        }
        printf("end\n");
        fflush(stdout);
    }
    return 0;
}

static int check(int ok, const char *what) {
    if (!ok) fprintf(stderr, "selftest failed: %s\n", what);
    return ok ? 0 : 1;
}

static int selftest(void) {
    static uint8_t src[600], enc[700], dec[700];
    static ef_decoder d;
    ef_frame f;
    size_t n, i, k;
    long m;
    int bad = 0;
    const size_t lens[] = {0, 1, 253, 254, 255, 508, 509, 600};
    bad |= check(ef_crc32((const uint8_t *)"123456789", 9) == 0xCBF43926u, "crc check value");
    for (k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        for (i = 0; i < lens[k]; i++) src[i] = (uint8_t)((i * 7 + k) % 5 == 0 ? 0 : i + 1);
        n = ef_cobs_encode(src, lens[k], enc, sizeof enc);
        bad |= check(n > 0 && memchr(enc, 0, n) == NULL, "cobs encode has no zero");
        m = ef_cobs_decode(enc, n, dec, sizeof dec);
        bad |= check(m == (long)lens[k] && memcmp(src, dec, lens[k]) == 0, "cobs round trip");
        bad |= check(ef_cobs_encode(src, lens[k], enc, n - 1) == 0 || n == 1, "cobs cap respected");
    }
    /* Frame round trip through the streaming decoder, with garbage before it. */
    ef_decoder_init(&d);
    for (i = 0; i < 300; i++) src[i] = (uint8_t)i;
    n = ef_encode_frame(EF_MSG_LOG, 77, src, 300, enc, sizeof enc);
    bad |= check(n > 0, "encode frame");
    for (i = 0; i < 5; i++) ef_decoder_push(&d, 0x42, &f);
    bad |= check(ef_decoder_push(&d, 0, &f) < 0, "garbage is an error");
    for (i = 0; i + 1 < n; i++) bad |= check(ef_decoder_push(&d, enc[i], &f) == EF_NONE, "mid frame");
    bad |= check(ef_decoder_push(&d, 0, &f) == EF_FRAME && f.seq == 77 && f.len == 300 &&
                     memcmp(f.payload, src, 300) == 0, "frame decoded");
    /* A flipped bit is caught by the CRC (or the COBS/length checks). */
    enc[10] ^= 0x10;
    for (i = 0; i < n - 1; i++) ef_decoder_push(&d, enc[i], &f);
    bad |= check(ef_decoder_push(&d, 0, &f) < 0, "flipped bit rejected");
    /* Bounded memory: an endless run of non-zero bytes is dropped as too long. */
    for (i = 0; i < 3 * EF_MAX_ENCODED; i++) ef_decoder_push(&d, 0x55, &f);
    bad |= check(d.len <= EF_MAX_ENCODED && ef_decoder_push(&d, 0, &f) == EF_ERR_LONG, "bounded");
    bad |= check(ef_encode_frame(EF_MSG_LOG, 0, src, 600, enc, sizeof enc) == 0, "payload cap");
    if (!bad) printf("selftest ok\n");
    return bad;
}

/* ------------------------------------------------------------------ the MCU over a pty */

static int write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                struct pollfd pfd = {fd, POLLOUT, 0};
                poll(&pfd, 1, 10);
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static uint16_t tx_seq;

static int send_frame(int fd, uint8_t type, const uint8_t *payload, size_t len) {
    uint8_t wire[EF_MAX_WIRE];
    size_t n = ef_encode_frame(type, tx_seq++, payload, (uint16_t)len, wire, sizeof wire);
    return n == 0 ? -1 : write_all(fd, wire, n);
}

/* Answer one command frame; returns 1 after a REBOOT (the host program then exits). */
static int handle_command(int fd, const ef_frame *f, float *rate) {
    static int have_last;
    static uint16_t last_seq;
    static uint8_t last_reply[4];
    static size_t last_len;
    static uint8_t last_type;
    ef_command cmd;
    uint8_t p[8];
    int code;
    if (f->type != EF_MSG_COMMAND) return 0;
    if (have_last && f->seq == last_seq) {
        /* A resent command whose ack was lost: ack again without running it twice. */
        printf("dup seq=%u\n", f->seq);
        send_frame(fd, last_type, last_reply, last_len);
        return 0;
    }
    code = ef_parse_command(f->payload, f->len, &cmd);
    if (code != 0) {
        last_type = EF_MSG_NACK;
        last_len = ef_nack_payload(f->seq, cmd.code, (uint8_t)code, p, sizeof p);
        printf("nack seq=%u code=%d\n", f->seq, code);
    } else {
        last_type = EF_MSG_ACK;
        last_len = ef_ack_payload(f->seq, cmd.code, p, sizeof p);
        if (cmd.code == EF_CMD_SET_RATE) {
            *rate = cmd.rate_hz;
            printf("cmd set_rate %.3f\n", (double)cmd.rate_hz);
        } else if (cmd.code == EF_CMD_ACTUATOR) {
            printf("cmd actuator %u %.3f\n", cmd.index, (double)cmd.value);
        } else if (cmd.code == EF_CMD_PING) {
            printf("cmd ping\n");
        } else {
            printf("cmd reboot\n");
        }
    }
    memcpy(last_reply, p, last_len);
    have_last = 1;
    last_seq = f->seq;
    fflush(stdout);
    send_frame(fd, last_type, last_reply, last_len);
    return code == 0 && cmd.code == EF_CMD_REBOOT;
}

static int mcu(int fd, long frames) {
    static ef_decoder dec;
    uint8_t p[EF_MAX_PAYLOAD], in[256];
    float values[4 * 8];
    float rate = 100.0f;
    long sent = 0;
    ef_frame f;
    ef_decoder_init(&dec);
    write_all(fd, (const uint8_t *)"", 1); /* a leading delimiter flushes any partial frame */
    send_frame(fd, EF_MSG_STATUS, p, ef_status_payload(0, rate, 0, EF_STATUS_FLAG_BOOT, p, sizeof p));
    for (;;) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int r = poll(&pfd, 1, sent < frames ? 1 : 50);
        if (r > 0 && (pfd.revents & POLLIN)) {
            ssize_t n = read(fd, in, sizeof in), i;
            for (i = 0; i < n; i++) {
                if (ef_decoder_push(&dec, in[i], &f) == EF_FRAME && handle_command(fd, &f, &rate))
                    return 0;
            }
            if (n <= 0 && errno != EAGAIN && errno != EINTR) return 2;
        } else if (r > 0 && (pfd.revents & (POLLHUP | POLLERR))) {
            return 2;
        }
        if (sent < frames) {
            /* Values the Python test can predict: frame k, sample s, channel c -> k*100+s*10+c. */
            int s, c;
            for (s = 0; s < 8; s++)
                for (c = 0; c < 4; c++) values[s * 4 + c] = (float)(sent * 100 + s * 10 + c);
            send_frame(fd, EF_MSG_SAMPLES, p,
                       ef_samples_payload((uint64_t)sent * 80000u, 10000u, 4, 8, values, p, sizeof p));
            sent++;
        }
    }
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "selftest") == 0) return selftest();
    if (argc >= 2 && strcmp(argv[1], "vectors") == 0) return vectors();
    if (argc >= 2 && strcmp(argv[1], "decode") == 0) return decode();
    if (argc >= 4 && strcmp(argv[1], "mcu") == 0) return mcu(atoi(argv[2]), atol(argv[3]));
    fprintf(stderr, "usage: ef_host selftest | vectors | decode | mcu FD FRAMES\n");
    return 64;
}
