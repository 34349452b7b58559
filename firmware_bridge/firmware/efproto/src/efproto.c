/* efproto: allocation-free encoder/decoder of the edgefleet serial protocol (see efproto.h). */
#include "efproto.h"

#include <math.h>
#include <string.h>

uint32_t ef_crc32_update(uint32_t crc, const uint8_t *data, size_t len) {
    size_t i;
    int bit;
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        for (bit = 0; bit < 8; bit++) {
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
        }
    }
    return ~crc;
}

uint32_t ef_crc32(const uint8_t *data, size_t len) { return ef_crc32_update(0, data, len); }

size_t ef_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap) {
    size_t read, write = 1, code_pos = 0;
    uint8_t code = 1;
    int after_full = 0;
    if (cap == 0) return 0;
    for (read = 0; read < len; read++) {
        if (write >= cap) return 0;
        after_full = 0;
        if (src[read] == 0) {
            dst[code_pos] = code;
            code_pos = write++;
            code = 1;
        } else {
            dst[write++] = src[read];
            if (++code == 0xFF) {
                if (write >= cap) return 0;
                dst[code_pos] = code;
                code_pos = write++;
                code = 1;
                after_full = 1;
            }
        }
    }
    /* Input ending on a full 254-byte block gets no empty block after it (as in the paper
     * and in Python's cobs), so both sides produce the same bytes. */
    if (after_full) return code_pos;
    dst[code_pos] = code;
    return write;
}

long ef_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap) {
    size_t read = 0, write = 0;
    while (read < len) {
        uint8_t code = src[read++];
        uint8_t i;
        if (code == 0) return -1;
        for (i = 1; i < code; i++) {
            if (read >= len || src[read] == 0 || write >= cap) return -1;
            dst[write++] = src[read++];
        }
        if (code != 0xFF && read < len) {
            if (write >= cap) return -1;
            dst[write++] = 0;
        }
    }
    return (long)write;
}

/* Streaming COBS writer: the frame is stuffed as it is produced, so no second buffer. */
typedef struct {
    uint8_t *out;
    size_t cap, pos, code_pos;
    uint8_t code;
    int failed;
    int after_full;
    uint32_t crc;
} ef_writer;

static void w_begin(ef_writer *w, uint8_t *out, size_t cap) {
    w->out = out;
    w->cap = cap;
    w->code_pos = 0;
    w->pos = 1;
    w->code = 1;
    w->failed = cap < 2;
    w->after_full = 0;
    w->crc = 0;
}

static void w_byte(ef_writer *w, uint8_t b) {
    if (w->failed) return;
    w->after_full = 0;
    if (b == 0) {
        w->out[w->code_pos] = w->code;
        w->code_pos = w->pos++;
        w->code = 1;
    } else {
        w->out[w->pos++] = b;
        if (++w->code == 0xFF) {
            w->out[w->code_pos] = w->code;
            w->code_pos = w->pos++;
            w->code = 1;
            w->after_full = 1;
        }
    }
    /* Keep room for the delimiter. */
    if (w->pos >= w->cap) w->failed = 1;
}

static void w_data(ef_writer *w, const uint8_t *p, size_t n, int crc) {
    size_t i;
    if (crc) w->crc = ef_crc32_update(w->crc, p, n);
    for (i = 0; i < n; i++) w_byte(w, p[i]);
}

size_t ef_encode_frame(uint8_t type, uint16_t seq, const uint8_t *payload, uint16_t len,
                       uint8_t *out, size_t cap) {
    ef_writer w;
    uint8_t head[EF_HEADER_SIZE], crc[EF_CRC_SIZE];
    if (len > EF_MAX_PAYLOAD || (len > 0 && payload == NULL)) return 0;
    head[0] = EF_PROTOCOL_VERSION;
    head[1] = type;
    ef_put_u16(head + 2, seq);
    ef_put_u16(head + 4, len);
    w_begin(&w, out, cap);
    w_data(&w, head, sizeof head, 1);
    w_data(&w, payload, len, 1);
    ef_put_u32(crc, w.crc);
    w_data(&w, crc, sizeof crc, 0);
    if (w.failed) return 0;
    if (w.after_full) {
        /* Ending on a full 254-byte block: drop the empty block opened after it, as
         * ef_cobs_encode and Python's cobs do. */
        w.pos = w.code_pos;
    } else {
        w.out[w.code_pos] = w.code;
    }
    w.out[w.pos++] = 0;
    return w.pos;
}

void ef_decoder_init(ef_decoder *dec) { memset(dec, 0, sizeof *dec); }

static int ef_fail(ef_decoder *dec, int result) {
    dec->errors[-result - 1]++;
    return result;
}

int ef_decoder_push(ef_decoder *dec, uint8_t byte, ef_frame *frame) {
    long n;
    uint16_t len;
    if (byte != 0) {
        if (dec->overflow) return EF_NONE;
        if (dec->len >= sizeof dec->buf) {
            dec->overflow = 1; /* bounded memory: drop up to the next delimiter */
            dec->len = 0;
            return EF_NONE;
        }
        dec->buf[dec->len++] = byte;
        return EF_NONE;
    }
    if (dec->overflow) {
        dec->overflow = 0;
        return ef_fail(dec, EF_ERR_LONG);
    }
    if (dec->len == 0) return EF_NONE; /* idle delimiters between frames */
    n = ef_cobs_decode(dec->buf, dec->len, dec->buf, sizeof dec->buf);
    dec->len = 0;
    if (n < 0) return ef_fail(dec, EF_ERR_COBS);
    if ((size_t)n < EF_HEADER_SIZE + EF_CRC_SIZE) return ef_fail(dec, EF_ERR_SHORT);
    if ((size_t)n > EF_MAX_FRAME) return ef_fail(dec, EF_ERR_LONG);
    if (ef_crc32(dec->buf, (size_t)n - EF_CRC_SIZE) != ef_get_u32(dec->buf + n - EF_CRC_SIZE))
        return ef_fail(dec, EF_ERR_CRC);
    if (dec->buf[0] != EF_PROTOCOL_VERSION) return ef_fail(dec, EF_ERR_VERSION);
    len = ef_get_u16(dec->buf + 4);
    if ((size_t)len != (size_t)n - EF_HEADER_SIZE - EF_CRC_SIZE) return ef_fail(dec, EF_ERR_LENGTH);
    if (dec->buf[1] < EF_MSG_SAMPLES || dec->buf[1] > EF_MSG_INFERENCE)
        return ef_fail(dec, EF_ERR_TYPE);
    frame->version = dec->buf[0];
    frame->type = dec->buf[1];
    frame->seq = ef_get_u16(dec->buf + 2);
    frame->len = len;
    frame->payload = dec->buf + EF_HEADER_SIZE;
    dec->frames++;
    return EF_FRAME;
}

void ef_put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

void ef_put_u32(uint8_t *p, uint32_t v) {
    ef_put_u16(p, (uint16_t)v);
    ef_put_u16(p + 2, (uint16_t)(v >> 16));
}

void ef_put_u64(uint8_t *p, uint64_t v) {
    ef_put_u32(p, (uint32_t)v);
    ef_put_u32(p + 4, (uint32_t)(v >> 32));
}

void ef_put_f32(uint8_t *p, float v) {
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    ef_put_u32(p, bits);
}

uint16_t ef_get_u16(const uint8_t *p) { return (uint16_t)(p[0] | ((uint16_t)p[1] << 8)); }

uint32_t ef_get_u32(const uint8_t *p) {
    return (uint32_t)ef_get_u16(p) | ((uint32_t)ef_get_u16(p + 2) << 16);
}

uint64_t ef_get_u64(const uint8_t *p) {
    return (uint64_t)ef_get_u32(p) | ((uint64_t)ef_get_u32(p + 4) << 32);
}

float ef_get_f32(const uint8_t *p) {
    uint32_t bits = ef_get_u32(p);
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

size_t ef_samples_payload(uint64_t t0_us, uint32_t period_us, uint8_t channels, uint8_t samples,
                          const float *values, uint8_t *out, size_t cap) {
    size_t n = (size_t)channels * samples, i;
    size_t need = 14 + 4 * n;
    if (n == 0 || need > cap || need > EF_MAX_PAYLOAD) return 0;
    ef_put_u64(out, t0_us);
    ef_put_u32(out + 8, period_us);
    out[12] = channels;
    out[13] = samples;
    for (i = 0; i < n; i++) ef_put_f32(out + 14 + 4 * i, values[i]);
    return need;
}

size_t ef_status_payload(uint32_t uptime_ms, float rate_hz, uint32_t tx_dropped, uint8_t flags,
                         uint8_t *out, size_t cap) {
    if (cap < 13) return 0;
    ef_put_u32(out, uptime_ms);
    ef_put_f32(out + 4, rate_hz);
    ef_put_u32(out + 8, tx_dropped);
    out[12] = flags;
    return 13;
}

size_t ef_log_payload(uint8_t level, const char *text, uint8_t *out, size_t cap) {
    size_t n = strlen(text);
    if (n + 1 > cap || n + 1 > EF_MAX_PAYLOAD) return 0;
    out[0] = level;
    memcpy(out + 1, text, n);
    return n + 1;
}

size_t ef_ack_payload(uint16_t acked_seq, uint8_t command, uint8_t *out, size_t cap) {
    if (cap < 3) return 0;
    ef_put_u16(out, acked_seq);
    out[2] = command;
    return 3;
}

size_t ef_nack_payload(uint16_t acked_seq, uint8_t command, uint8_t code, uint8_t *out,
                       size_t cap) {
    if (cap < 4) return 0;
    ef_put_u16(out, acked_seq);
    out[2] = command;
    out[3] = code;
    return 4;
}

size_t ef_inference_payload(uint64_t t_us, uint16_t label, float score, uint8_t *out,
                            size_t cap) {
    if (cap < 14) return 0;
    ef_put_u64(out, t_us);
    ef_put_u16(out + 8, label);
    ef_put_f32(out + 10, score);
    return 14;
}

size_t ef_set_rate_payload(float rate_hz, uint8_t *out, size_t cap) {
    if (cap < 5) return 0;
    out[0] = EF_CMD_SET_RATE;
    ef_put_f32(out + 1, rate_hz);
    return 5;
}

size_t ef_actuator_payload(uint8_t index, float value, uint8_t *out, size_t cap) {
    if (cap < 6) return 0;
    out[0] = EF_CMD_ACTUATOR;
    out[1] = index;
    ef_put_f32(out + 2, value);
    return 6;
}

size_t ef_bare_command_payload(uint8_t code, uint8_t *out, size_t cap) {
    if (cap < 1) return 0;
    out[0] = code;
    return 1;
}

int ef_parse_command(const uint8_t *payload, uint16_t len, ef_command *cmd) {
    memset(cmd, 0, sizeof *cmd);
    if (len < 1) return EF_NACK_MALFORMED;
    cmd->code = payload[0];
    switch (cmd->code) {
    case EF_CMD_SET_RATE:
        if (len != 5) return EF_NACK_MALFORMED;
        cmd->rate_hz = ef_get_f32(payload + 1);
        /* Written as !(x > 0) so that NaN is refused too. */
        if (!(cmd->rate_hz > 0.0f) || cmd->rate_hz > 10000.0f) return EF_NACK_BAD_ARGS;
        return 0;
    case EF_CMD_ACTUATOR:
        if (len != 6) return EF_NACK_MALFORMED;
        cmd->index = payload[1];
        cmd->value = ef_get_f32(payload + 2);
        /* A sketch turns the value into a duty cycle: (int)NaN or (int)inf is undefined. */
        if (!isfinite(cmd->value)) return EF_NACK_BAD_ARGS;
        return 0;
    case EF_CMD_REBOOT:
    case EF_CMD_PING:
        return len == 1 ? 0 : EF_NACK_MALFORMED;
    default:
        return EF_NACK_UNKNOWN_COMMAND;
    }
}
