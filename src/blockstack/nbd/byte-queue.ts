// A FIFO of received socket chunks. Messages are parsed in place from the first chunk; only a message that
// spans two chunks is copied (coalesced), so the common case of many requests in one chunk copies nothing.

export class ByteQueue {
  private chunks: Buffer[] = []
  /** Read position inside chunks[0]. */
  private headOffset = 0
  private total = 0

  get length (): number { return this.total }

  push (chunk: Buffer): void {
    if (chunk.length === 0) return
    this.chunks.push(chunk)
    this.total += chunk.length
  }

  /**
   * Makes the first `n` bytes contiguous and returns the buffer and offset they start at. The bytes stay
   * queued: call skip(n) once parsed. Requires n <= length.
   */
  contiguous (n: number): { buf: Buffer, offset: number } {
    if (n > this.total) throw new RangeError(`contiguous(${n}) with ${this.total} bytes queued`)
    const first = this.chunks[0]
    if (first.length - this.headOffset >= n) return { buf: first, offset: this.headOffset }
    const merged = Buffer.allocUnsafe(n)
    let filled = 0
    while (filled < n) {
      const chunk = this.chunks[0]
      const available = chunk.length - this.headOffset
      const want = n - filled
      if (available <= want) {
        chunk.copy(merged, filled, this.headOffset)
        filled += available
        this.chunks.shift()
        this.headOffset = 0
      } else {
        chunk.copy(merged, filled, this.headOffset, this.headOffset + want)
        filled += want
        // The rest of this chunk follows `merged`, so it must start at offset 0 of its own entry.
        this.chunks[0] = chunk.subarray(this.headOffset + want)
        this.headOffset = 0
      }
    }
    this.chunks.unshift(merged)
    // total is unchanged: the same bytes now live in `merged`.
    return { buf: merged, offset: 0 }
  }

  /** Copies out (or views, when inside one chunk) the next `n` bytes and removes them. */
  take (n: number): Buffer {
    const { buf, offset } = this.contiguous(n)
    const out = buf.subarray(offset, offset + n)
    this.skip(n)
    return out
  }

  /** Drops up to `n` bytes; returns how many were dropped. */
  skip (n: number): number {
    let left = Math.min(n, this.total)
    const dropped = left
    while (left > 0) {
      const chunk = this.chunks[0]
      const available = chunk.length - this.headOffset
      if (available <= left) {
        left -= available
        this.chunks.shift()
        this.headOffset = 0
      } else {
        this.headOffset += left
        left = 0
      }
    }
    this.total -= dropped
    return dropped
  }

  /** Removes and returns everything queued, as chunks. */
  drain (): Buffer[] {
    const out = this.chunks
    if (out.length > 0 && this.headOffset > 0) out[0] = out[0].subarray(this.headOffset)
    this.chunks = []
    this.headOffset = 0
    this.total = 0
    return out
  }
}
