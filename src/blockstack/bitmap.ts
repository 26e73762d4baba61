// A fixed-size bitmap, one bit per block, LSB first within each byte (the form adverts and level use).

export class Bitmap {
  readonly bits: Uint8Array
  private population = 0

  constructor (readonly size: number, bytes?: Uint8Array) {
    this.bits = new Uint8Array(Math.ceil(size / 8))
    if (bytes !== undefined) this.or(bytes)
  }

  get (index: number): boolean {
    if (index < 0 || index >= this.size) return false
    return (this.bits[index >> 3] & (1 << (index & 7))) !== 0
  }

  set (index: number): void {
    const mask = 1 << (index & 7)
    if ((this.bits[index >> 3] & mask) === 0) {
      this.bits[index >> 3] |= mask
      this.population++
    }
  }

  clear (index: number): void {
    const mask = 1 << (index & 7)
    if ((this.bits[index >> 3] & mask) !== 0) {
      this.bits[index >> 3] &= ~mask
      this.population--
    }
  }

  /** Sets every bit set in `bytes` (extra bits past `size` are ignored). */
  or (bytes: Uint8Array): void {
    const n = Math.min(bytes.byteLength, this.bits.byteLength)
    for (let i = 0; i < n; i++) this.bits[i] |= bytes[i]
    const tail = this.size & 7
    if (tail !== 0 && this.bits.byteLength > 0) this.bits[this.bits.byteLength - 1] &= (1 << tail) - 1
    this.population = popcount(this.bits)
  }

  count (): number {
    return this.population
  }

  toBytes (): Uint8Array {
    return this.bits.slice()
  }
}

export function popcount (bytes: Uint8Array): number {
  let total = 0
  for (let i = 0; i < bytes.length; i++) {
    let v = bytes[i]
    v = v - ((v >> 1) & 0x55)
    v = (v & 0x33) + ((v >> 2) & 0x33)
    total += (v + (v >> 4)) & 0x0f
  }
  return total
}
