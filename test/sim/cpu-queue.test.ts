import assert from 'node:assert/strict'
import { test } from 'node:test'
import { bookCalendar, CalendarSlab, CpuQueue } from './cpu-queue.js'
import { Rng } from './rng.js'

test('work booked in time order queues FIFO, as one server', () => {
  const q = new CpuQueue()
  assert.equal(q.book(0, 0, 2), 2)
  assert.equal(q.book(0, 1, 2), 4) // waits for the first
  assert.equal(q.book(0, 10, 1), 11) // idle in between
  assert.equal(q.busyMs, 5)
})

test('work booked ahead leaves the time before it to work ready earlier, which runs on after it if it must', () => {
  const q = new CpuQueue()
  assert.equal(q.book(0, 5, 2), 7) // a block's receive work, booked for when it arrives
  assert.equal(q.book(0, 0, 3), 3) // ready now: fits before it
  assert.equal(q.book(0, 3, 4), 9) // 2 ms in the gap [3, 5], 2 ms after [5, 7]
  assert.equal(q.freeAtMs(0), 9)
  assert.equal(q.book(0, 0, 1), 10) // no gap left before 9
})

test('intervals that ended before the clock are forgotten, not filled', () => {
  const q = new CpuQueue()
  q.book(0, 0, 1)
  q.book(0, 3, 1)
  assert.equal(q.book(2, 2, 2), 5) // [2, 3] then after [3, 4]
  assert.equal(q.book(10, 10, 1), 11)
})

test('the hosts\' calendars in one flat buffer book exactly as one array per host (its stride growing)', () => {
  const rng = new Rng(7)
  const slab = new CalendarSlab()
  const arrays: number[][] = []
  let nowMs = 0
  for (let step = 0; step < 20_000; step++) {
    if (arrays.length < 50 && rng.next() < 0.01) { assert.equal(slab.add(), arrays.length); arrays.push([]) }
    if (arrays.length === 0) continue
    if (rng.next() < 0.05) nowMs += rng.next() * 3
    const h = rng.int(arrays.length)
    // work ready now or booked ahead, some of it long enough to keep many intervals open (the stride doubles)
    const readyMs = nowMs + (rng.next() < 0.5 ? 0 : rng.next() * 40)
    const durMs = rng.next() < 0.05 ? 0 : rng.next() * 2
    assert.equal(slab.book(h, nowMs, readyMs, durMs), bookCalendar(arrays[h], nowMs, readyMs, durMs))
  }
})
