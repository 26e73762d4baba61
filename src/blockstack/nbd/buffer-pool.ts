// Reusable read buffers in power-of-two size classes. A fresh large Buffer per read costs a malloc, page
// faults on first touch (the kernel copy into it faults every page) and V8 external-memory GC pressure;
// reusing buffers removed most of that (measured: pread into fresh 256 KiB buffers took ~4x longer than into
// reused ones). Free buffers are bounded by `maxPooledBytes`; buffers in use are unbounded (the server bounds
// reads in flight). A buffer must be released only once nothing reads it any more (after the socket write).

export const DEFAULT_POOL_MAX_POOLED_BYTES = 64 * 1024 * 1024
const MIN_CLASS_BYTES = 4096

export class BufferPoolDoubleReleaseError extends Error {
  override name = 'BufferPoolDoubleReleaseError'
}

export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>()
  private readonly inUse = new WeakSet<ArrayBuffer>()
  private pooledBytes = 0

  constructor (private readonly maxPooledBytes = DEFAULT_POOL_MAX_POOLED_BYTES) {}

  /** A Buffer of exactly `length` bytes (contents undefined) viewing a pooled allocation. */
  acquire (length: number): Buffer {
    const size = classSize(length)
    const list = this.free.get(size)
    let ab = list?.pop()
    if (ab !== undefined) {
      this.pooledBytes -= size
    } else {
      ab = Buffer.allocUnsafeSlow(size).buffer as ArrayBuffer
    }
    this.inUse.add(ab)
    return Buffer.from(ab, 0, length)
  }

  /** Gives a buffer from acquire() back. Buffers the pool does not own are ignored. */
  release (buf: Uint8Array): void {
    const ab = buf.buffer as ArrayBuffer
    if (!this.inUse.has(ab)) {
      if (this.owned(ab)) throw new BufferPoolDoubleReleaseError('buffer released twice')
      return
    }
    this.inUse.delete(ab)
    const size = ab.byteLength
    if (this.pooledBytes + size > this.maxPooledBytes) return
    let list = this.free.get(size)
    if (list === undefined) {
      list = []
      this.free.set(size, list)
    }
    list.push(ab)
    this.pooledBytes += size
  }

  /** Bytes held in free lists. */
  get pooled (): number { return this.pooledBytes }

  private owned (ab: ArrayBuffer): boolean {
    return this.free.get(ab.byteLength)?.includes(ab) ?? false
  }
}

function classSize (length: number): number {
  if (length <= MIN_CLASS_BYTES) return MIN_CLASS_BYTES
  return 2 ** Math.ceil(Math.log2(length))
}

/**
 * Optional extension of NbdExport: when present, the server hands each buffer that read() resolved with back
 * once the reply carrying it has been written to the socket (or dropped), so the export can reuse it.
 */
export interface BufferReleasingExport {
  releaseBuffer?: (data: Uint8Array) => void
}
