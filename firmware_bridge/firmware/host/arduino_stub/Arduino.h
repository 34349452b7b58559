/* Just enough of the Arduino core to compile-check the example sketch on the host (tests). */
#ifndef ARDUINO_STUB_H
#define ARDUINO_STUB_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define A0 14
#define A1 15
#define A2 16
#define OUTPUT 1
#define constrain(x, lo, hi) ((x) < (lo) ? (lo) : ((x) > (hi) ? (hi) : (x)))

unsigned long micros(void);
unsigned long millis(void);
int analogRead(uint8_t pin);
void analogWrite(uint8_t pin, int value);
void pinMode(uint8_t pin, uint8_t mode);
void setup(void);
void loop(void);

class StubSerial {
 public:
  void begin(unsigned long baud);
  int available(void);
  int read(void);
  int availableForWrite(void);
  size_t write(uint8_t byte);
  size_t write(const uint8_t *data, size_t len);
  void flush(void);
};
extern StubSerial Serial;
#endif
