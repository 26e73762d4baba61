// Unsigned LEB128 varints and zig-zag signed integers, up to 2^53 - 1, with strict bounded reading.

import { ProfileDecodeError } from './errors.js'

/** 8 varint bytes carry 56 bits, enough for any safe integer; longer encodings are refused. */
const MAX_VARINT_BYTES = 8

export class ByteWriter {
  private buf: Uint8Array
  private len = 0

  constructor (initialBytes = 256) {
    this.buf = new Uint8Array(initialBytes)
  }

  private ensure (extra: number): void {
    if (this.len + extra <= this.buf.length) return
    let size = this.buf.length * 2
    while (size < this.len + extra) size *= 2
    const next = new Uint8Array(size)
    next.set(this.buf.subarray(0, this.len))
    this.buf = next
  }

  byte (value: number): void {
    this.ensure(1)
    this.buf[this.len++] = value & 0xff
  }

  bytes (data: Uint8Array): void {
    this.ensure(data.length)
    this.buf.set(data, this.len)
    this.len += data.length
  }

  uvarint (value: number): void {
    if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`varint out of range: ${value}`)
    this.ensure(MAX_VARINT_BYTES)
    let v = value
    while (v >= 0x80) {
      this.buf[this.len++] = (v % 0x80) | 0x80
      v = Math.floor(v / 0x80)
    }
    this.buf[this.len++] = v
  }

  svarint (value: number): void {
    this.uvarint(value >= 0 ? value * 2 : -value * 2 - 1)
  }

  finish (): Uint8Array {
    return this.buf.slice(0, this.len)
  }
}

export class ByteReader {
  private pos = 0
  constructor (private readonly data: Uint8Array) {}

  get offset (): number { return this.pos }
  get remaining (): number { return this.data.length - this.pos }

  byte (what: string): number {
    if (this.pos >= this.data.length) throw new ProfileDecodeError(`truncated: ${what} at byte ${this.pos}`)
    return this.data[this.pos++]
  }

  bytes (n: number, what: string): Uint8Array {
    if (n > this.remaining) throw new ProfileDecodeError(`truncated: ${what} needs ${n} bytes at byte ${this.pos}`)
    const out = this.data.subarray(this.pos, this.pos + n)
    this.pos += n
    return out
  }

  /** Reads a varint and checks it against [min, max]. */
  uvarint (what: string, min: number, max: number): number {
    let value = 0
    let scale = 1
    for (let i = 0; i < MAX_VARINT_BYTES; i++) {
      const b = this.byte(what)
      value += (b & 0x7f) * scale
      if ((b & 0x80) === 0) {
        if (i > 0 && b === 0) throw new ProfileDecodeError(`non-canonical varint: ${what} at byte ${this.pos - 1}`)
        if (!Number.isSafeInteger(value) || value < min || value > max) {
          throw new ProfileDecodeError(`${what} out of range [${min}, ${max}]: ${value}`)
        }
        return value
      }
      scale *= 0x80
    }
    throw new ProfileDecodeError(`varint too long: ${what} at byte ${this.pos}`)
  }

  svarint (what: string, min: number, max: number): number {
    const z = this.uvarint(what, 0, Number.MAX_SAFE_INTEGER)
    const value = z % 2 === 0 ? z / 2 : -(z + 1) / 2
    if (value < min || value > max) throw new ProfileDecodeError(`${what} out of range [${min}, ${max}]: ${value}`)
    return value
  }
}
