// edgefleet_sensor: sample analog inputs and send them to the edgefleet bridge as COBS frames.
//
// Install firmware_bridge/firmware/efproto as an Arduino library (copy or symlink the folder
// into ~/Arduino/libraries/), open this sketch, pick your board, upload. On the Pi:
//   edgefleet bridge monitor --port /dev/ttyACM0 --baud 115200
//
// Everything is static: RAM use is fixed at compile time, about 1.8 KB with these defaults
// (a decoder, one wire buffer, one payload buffer). That is too much for an ATmega328P (Uno,
// 2 KB): use a board with more RAM (Leonardo, ESP32, RP2040, SAMD), or lower EF_MAX_PAYLOAD
// in efproto.h (it sizes the buffers of both files) together with EF_BATCH.
#include <Arduino.h>
#include <efproto.h>
#if defined(__AVR__)
#include <avr/wdt.h>
#endif

#define EF_CHANNELS 3
#define EF_BATCH 10
#define EF_ACTUATORS 2

static const uint8_t kInputs[EF_CHANNELS] = {A0, A1, A2};
static const uint8_t kActuatorPins[EF_ACTUATORS] = {5, 6};  // PWM outputs

static ef_decoder rx;
static uint8_t wire[EF_MAX_WIRE];
static uint8_t payload[EF_MAX_PAYLOAD];
static float batch[EF_CHANNELS * EF_BATCH];
static uint8_t filled;
static uint16_t tx_seq;
static uint32_t tx_dropped;  // frames not sent (USB buffer full), reported in each status
static float rate_hz = 100.0f;
static uint32_t period_us = 10000UL;
static uint32_t next_sample_us;
static uint64_t batch_t0_us;
static uint32_t last_status_ms;
static uint8_t status_flags = EF_STATUS_FLAG_BOOT;
static int32_t last_cmd_seq = -1;
static uint8_t last_reply_type;
static uint8_t last_reply[4];
static size_t last_reply_len;

static void reboot_now(void) {
#if defined(__AVR__)
  wdt_enable(WDTO_15MS);  // let the watchdog reset the chip
  for (;;) {
  }
#elif defined(ARDUINO_ARCH_ESP32) || defined(ARDUINO_ARCH_ESP8266)
  ESP.restart();
#elif defined(__arm__)
  NVIC_SystemReset();
#else
  // No portable reset here: start over as setup() would.
  tx_seq = 0;
  status_flags = EF_STATUS_FLAG_BOOT;
  setup();
#endif
}

static void send_frame(uint8_t type, const uint8_t *p, size_t len) {
  size_t n = ef_encode_frame(type, tx_seq++, p, (uint16_t)len, wire, sizeof wire);
  // Serial.write blocks when the USB buffer is full; availableForWrite lets us drop instead,
  // and the bridge counts the gap in sequence numbers as lost frames.
  if (n > 0 && (size_t)Serial.availableForWrite() >= n) {
    Serial.write(wire, n);
  } else {
    tx_dropped++;
  }
}

static void reply(uint8_t type, const uint8_t *p, size_t len, uint16_t seq) {
  memcpy(last_reply, p, len);
  last_reply_len = len;
  last_reply_type = type;
  last_cmd_seq = seq;
  send_frame(type, p, len);
}

static void handle_command(const ef_frame *f) {
  ef_command cmd;
  uint8_t p[4];
  if (f->type != EF_MSG_COMMAND) return;
  if ((int32_t)f->seq == last_cmd_seq) {  // a resend: the ack was lost, do not run it twice
    send_frame(last_reply_type, last_reply, last_reply_len);
    return;
  }
  int code = ef_parse_command(f->payload, f->len, &cmd);
  if (code == 0 && cmd.code == EF_CMD_ACTUATOR && cmd.index >= EF_ACTUATORS) {
    code = EF_NACK_BAD_ARGS;
  }
  if (code != 0) {
    reply(EF_MSG_NACK, p, ef_nack_payload(f->seq, cmd.code, (uint8_t)code, p, sizeof p), f->seq);
    return;
  }
  reply(EF_MSG_ACK, p, ef_ack_payload(f->seq, cmd.code, p, sizeof p), f->seq);
  switch (cmd.code) {
    case EF_CMD_SET_RATE:
      rate_hz = cmd.rate_hz;
      period_us = (uint32_t)(1e6f / rate_hz);
      filled = 0;
      break;
    case EF_CMD_ACTUATOR:
      analogWrite(kActuatorPins[cmd.index], (int)(constrain(cmd.value, 0.0f, 1.0f) * 255.0f));
      break;
    case EF_CMD_REBOOT:
      Serial.flush();
      reboot_now();
      break;
    default:  // PING: the ack is the answer
      break;
  }
}

void setup() {
  Serial.begin(115200);
  ef_decoder_init(&rx);
  for (uint8_t i = 0; i < EF_ACTUATORS; i++) pinMode(kActuatorPins[i], OUTPUT);
  Serial.write((uint8_t)0);  // a leading delimiter: the bridge drops any partial frame
  next_sample_us = micros();
}

void loop() {
  ef_frame f;
  while (Serial.available() > 0) {
    if (ef_decoder_push(&rx, (uint8_t)Serial.read(), &f) == EF_FRAME) handle_command(&f);
  }
  uint32_t now = micros();
  if ((int32_t)(now - next_sample_us) >= 0) {
    if (filled == 0) batch_t0_us = now;
    for (uint8_t c = 0; c < EF_CHANNELS; c++) {
      batch[filled * EF_CHANNELS + c] = analogRead(kInputs[c]) * (5.0f / 1023.0f);
    }
    next_sample_us += period_us;
    if (++filled == EF_BATCH) {
      size_t n = ef_samples_payload(batch_t0_us, period_us, EF_CHANNELS, EF_BATCH, batch,
                                    payload, sizeof payload);
      send_frame(EF_MSG_SAMPLES, payload, n);
      filled = 0;
    }
  }
  if (millis() - last_status_ms >= 1000UL) {
    last_status_ms = millis();
    send_frame(EF_MSG_STATUS, payload,
               ef_status_payload(last_status_ms, rate_hz, tx_dropped, status_flags, payload,
                                 sizeof payload));
    status_flags = 0;
  }
}
