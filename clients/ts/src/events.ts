// A small typed event emitter that works alike in Node.js and browsers.
/* eslint-disable @typescript-eslint/no-explicit-any */

type Listener<Args extends unknown[]> = (...args: Args) => void;

export class Emitter<Events extends { [K in keyof Events]: unknown[] }> {
  // Each set holds listeners of its own event's arguments; the map cannot say so by type.
  private readonly listeners = new Map<keyof Events, Set<Listener<any[]>>>();

  /** Calls `listener` on every `event`; the returned function stops that. */
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Calls the listeners of `event`. A listener that throws does not stop the others, nor
   * the client that emits: its error is rethrown on its own, as an uncaught error. */
  emit<K extends keyof Events>(event: K, ...args: Events[K]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        listener(...args);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
