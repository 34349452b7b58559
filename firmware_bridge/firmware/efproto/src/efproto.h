/*
 * efproto: the MCU side of the edgefleet serial protocol, version 1 (docs/serial-protocol.md).
 *
 * C99, no malloc, no global state: every buffer is owned by the caller, so several links can
 * run side by side and the memory use is known at compile time. The Python side is
 * edgefleet.firmware_bridge (frames.py, messages.py); both check the same test vectors.
 *
 * Frame before COBS: version u8 | type u8 | seq u16 LE | len u16 LE | payload | crc32 u32 LE
 * CRC-32/ISO-HDLC (zlib's crc32) over header and payload. COBS-encoded, then one 0x00.
 */
#ifndef EFPROTO_H
#define EFPROTO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EF_PROTOCOL_VERSION 1u
#define EF_HEADER_SIZE 6u
#define EF_CRC_SIZE 4u
#define EF_MAX_PAYLOAD 512u
#define EF_MAX_FRAME (EF_HEADER_SIZE + EF_MAX_PAYLOAD + EF_CRC_SIZE)
/* COBS adds one code byte per started run of 254 bytes. */
#define EF_MAX_ENCODED (EF_MAX_FRAME + (EF_MAX_FRAME + 253u) / 254u)
/* Worst case on the wire: the encoded frame plus its 0x00 delimiter. */
#define EF_MAX_WIRE (EF_MAX_ENCODED + 1u)

enum ef_msg_type {
    EF_MSG_SAMPLES = 0x01,
    EF_MSG_STATUS = 0x02,
    EF_MSG_LOG = 0x03,
    EF_MSG_COMMAND = 0x04,
    EF_MSG_ACK = 0x05,
    EF_MSG_NACK = 0x06,
    EF_MSG_INFERENCE = 0x07
};

enum ef_command_code {
    EF_CMD_SET_RATE = 0x01,
    EF_CMD_ACTUATOR = 0x02,
    EF_CMD_REBOOT = 0x03,
    EF_CMD_PING = 0x04
};

enum ef_nack_code {
    EF_NACK_BAD_ARGS = 0x01,
    EF_NACK_UNKNOWN_COMMAND = 0x02,
    EF_NACK_BUSY = 0x03,
    EF_NACK_MALFORMED = 0x04
};

#define EF_STATUS_FLAG_BOOT 0x01u

/* What ef_decoder_push reports for one byte. Errors are counted in the decoder too. */
enum ef_result {
    EF_NONE = 0,        /* byte consumed, no frame ended */
    EF_FRAME = 1,       /* a valid frame ended: see the ef_frame */
    EF_ERR_COBS = -1,   /* bytes between delimiters are not valid COBS */
    EF_ERR_SHORT = -2,  /* shorter than header + CRC */
    EF_ERR_LONG = -3,   /* longer than EF_MAX_ENCODED: dropped up to the next 0x00 */
    EF_ERR_CRC = -4,    /* CRC mismatch */
    EF_ERR_VERSION = -5,/* unknown protocol version */
    EF_ERR_LENGTH = -6, /* header length != payload carried */
    EF_ERR_TYPE = -7    /* unknown message type */
};
#define EF_ERROR_KINDS 7

typedef struct {
    uint8_t version;
    uint8_t type;
    uint16_t seq;
    uint16_t len;
    const uint8_t *payload; /* points into the decoder's buffer until the next push */
} ef_frame;

typedef struct {
    uint8_t buf[EF_MAX_ENCODED];
    size_t len;
    int overflow;
    uint32_t frames;
    uint32_t errors[EF_ERROR_KINDS]; /* index -result - 1 */
} ef_decoder;

/* CRC-32/ISO-HDLC: poly 0x04C11DB7 reflected (0xEDB88320), init/xorout 0xFFFFFFFF.
 * Bitwise, no table: 1 KiB of table is too much RAM on an ATmega328P. */
uint32_t ef_crc32_update(uint32_t crc, const uint8_t *data, size_t len);
uint32_t ef_crc32(const uint8_t *data, size_t len);

/* COBS. Encode returns the encoded length (no delimiter written) or 0 if cap is too small.
 * Decode returns the decoded length or -1 (invalid, or cap too small); in place is allowed. */
size_t ef_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap);
long ef_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap);

/* Encode one frame with its trailing 0x00 into out; returns bytes written, 0 on error.
 * out needs EF_MAX_WIRE bytes for the largest payload. */
size_t ef_encode_frame(uint8_t type, uint16_t seq, const uint8_t *payload, uint16_t len,
                       uint8_t *out, size_t cap);

void ef_decoder_init(ef_decoder *dec);
/* Feed one received byte. On EF_FRAME, *frame is filled in. */
int ef_decoder_push(ef_decoder *dec, uint8_t byte, ef_frame *frame);

/* Little-endian field writers and readers, and IEEE-754 float32 (all targets we support). */
void ef_put_u16(uint8_t *p, uint16_t v);
void ef_put_u32(uint8_t *p, uint32_t v);
void ef_put_u64(uint8_t *p, uint64_t v);
void ef_put_f32(uint8_t *p, float v);
uint16_t ef_get_u16(const uint8_t *p);
uint32_t ef_get_u32(const uint8_t *p);
uint64_t ef_get_u64(const uint8_t *p);
float ef_get_f32(const uint8_t *p);

/* Payload builders: return the payload length, 0 if it does not fit cap. */
size_t ef_samples_payload(uint64_t t0_us, uint32_t period_us, uint8_t channels, uint8_t samples,
                          const float *values, uint8_t *out, size_t cap);
size_t ef_status_payload(uint32_t uptime_ms, float rate_hz, uint32_t tx_dropped, uint8_t flags,
                         uint8_t *out, size_t cap);
size_t ef_log_payload(uint8_t level, const char *text, uint8_t *out, size_t cap);
size_t ef_ack_payload(uint16_t acked_seq, uint8_t command, uint8_t *out, size_t cap);
size_t ef_nack_payload(uint16_t acked_seq, uint8_t command, uint8_t code, uint8_t *out,
                       size_t cap);
size_t ef_inference_payload(uint64_t t_us, uint16_t label, float score, uint8_t *out,
                            size_t cap);
size_t ef_set_rate_payload(float rate_hz, uint8_t *out, size_t cap);
size_t ef_actuator_payload(uint8_t index, float value, uint8_t *out, size_t cap);
/* REBOOT and PING carry no arguments. */
size_t ef_bare_command_payload(uint8_t code, uint8_t *out, size_t cap);

/* A parsed COMMAND payload. */
typedef struct {
    uint8_t code;
    float rate_hz;        /* EF_CMD_SET_RATE */
    uint8_t index;        /* EF_CMD_ACTUATOR */
    float value;          /* EF_CMD_ACTUATOR */
} ef_command;

/* Parse a COMMAND frame's payload; returns 0 or an ef_nack_code to answer with: MALFORMED for a
 * wrong length, UNKNOWN_COMMAND, BAD_ARGS for a rate outside (0, 10000] or a non-finite value. */
int ef_parse_command(const uint8_t *payload, uint16_t len, ef_command *cmd);

#ifdef __cplusplus
}
#endif

#endif /* EFPROTO_H */
