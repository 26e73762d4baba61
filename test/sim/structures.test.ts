// The simulator's hand-made containers against the obvious reference, with a seeded stream of random operations:
// BlockMap must behave as the Map<number, V> it replaced (order included: the engine iterates it), EventHeap must
// pop in (time, insertion) order, also across the renumbering of its sequence keys.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { BlockMap } from './block-map.js'
import { EventHeap } from './heap.js'

/** A small seeded generator (the runs are reproducible). */
function lcg (seed: number): () => number {
  let x = seed
  return () => { x = (x * 1103515245 + 12345) % 2147483648; return x / 2147483648 }
}

test('BlockMap does what a Map<number, V> does: get, has, set, delete, take, clear, size, and iteration order', () => {
  const rnd = lcg(99)
  for (let round = 0; round < 30; round++) {
    const ours = new BlockMap<number>()
    const ref = new Map<number, number>()
    const keys = 3 + Math.floor(rnd() * 60)
    for (let step = 0; step < 3000; step++) {
      const b = Math.floor(rnd() * keys)
      const r = rnd()
      if (r < 0.4) { ours.set(b, step); ref.set(b, step) } else if (r < 0.6) assert.equal(ours.delete(b), ref.delete(b))
      else if (r < 0.8) { const want = ref.get(b); ref.delete(b); assert.equal(ours.take(b), want) } else if (r < 0.81) { ours.clear(); ref.clear() } else {
        assert.equal(ours.get(b), ref.get(b))
        assert.equal(ours.has(b), ref.has(b))
      }
      assert.equal(ours.size, ref.size)
      assert.deepEqual(ours.keys(), [...ref.keys()])
      const seen: Array<[number, number]> = []
      ours.forEach((v, k) => seen.push([k, v]))
      assert.deepEqual(seen, [...ref.entries()])
    }
  }
})

test('EventHeap pops in (time, insertion) order, also after its sequence keys are renumbered', () => {
  const rnd = lcg(12345)
  for (let round = 0; round < 10; round++) {
    const heap = new EventHeap<number>()
    const ref: Array<[number, number]> = [] // [time, id]; ids rise with insertion
    let id = 0
    let now = 0
    for (let step = 0; step < 10_000; step++) {
      if (rnd() < 0.55) {
        const t = now + Math.floor(rnd() * 20)
        heap.push(t, id)
        ref.push([t, id++])
      } else if (ref.length > 0) {
        ref.sort((a, b) => a[0] - b[0] || a[1] - b[1])
        const [t, want] = ref.shift() as [number, number]
        const e = heap.pop()
        assert.ok(e !== undefined)
        assert.equal(e.t, t)
        assert.equal(e.fn, want)
        now = t
      }
      // What a run of 2^29 events would do: every pending entry gets a new key, in order.
      if (step % 3000 === 1500) (heap as unknown as { renumber: () => void }).renumber()
    }
  }
})
