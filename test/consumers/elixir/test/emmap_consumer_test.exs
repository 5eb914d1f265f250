defmodule EmmapConsumerTest do
  use ExUnit.Case

  setup do
    files = ["/tmp/emmap_elixir.bin", "/tmp/emmap_elixir_counters.bin"]
    for f <- files, do: File.rm(f)
    on_exit(fn -> for f <- files, do: File.rm(f) end)
    :ok
  end

  # The README's Elixir example, as written there.
  test "open, write, read, a direct binary, atomics, counters" do
    File.rm("/tmp/emmap_elixir_counters.bin")
    {:ok, m} = :emmap.open(~c"/tmp/emmap_elixir.bin", 0, 64, [:create, :read, :write, :shared, :direct])
    :ok = :emmap.pwrite(m, 0, "hello")
    {:ok, "hello"} = :file.pread(m, 0, 5)
    {:ok, view} = :emmap.pread(m, 0, 5)
    :ok = :emmap.pwrite(m, 0, "HELLO")
    "HELLO" = view
    {:ok, 0} = :emmap.patomic_add(m, 8, 5)
    {:ok, 5} = :emmap.patomic_read_integer(m, 8)
    :ok = :emmap.close(m)
    c = :emmap.open_counters(~c"/tmp/emmap_elixir_counters.bin", 2)
    0 = :emmap.inc_counter(c, 1, 10)
    10 = :emmap.read_counter(c, 1)
    :ok = :emmap.close_counters(c)
  end

  test "a dependent module's use" do
    path = Path.join(System.tmp_dir!(), "emmap_consumer_#{System.unique_integer([:positive])}.bin")
    assert EmmapConsumer.run(path) == "hello from elixir"
    File.rm!(path)
  end

  test "emmap's documentation is there for h/1" do
    {:docs_v1, _, :erlang, "application/erlang+html", %{"en" => _}, _, docs} = Code.fetch_docs(:emmap)
    assert [%{"en" => [_ | _]}] = for {{:function, :open, 2}, _, _, doc, _} <- docs, do: doc
    Application.load(:emmap)
    # emmap's internal modules have their documentation hidden
    internal = [:emmap_nif, :emmap_errors]
    for m <- Application.spec(:emmap, :modules) -- internal do
      assert {:docs_v1, _, :erlang, _, %{"en" => _}, _, _} = Code.fetch_docs(m)
    end
    for m <- internal do
      assert {:docs_v1, _, :erlang, _, :hidden, _, _} = Code.fetch_docs(m)
    end
  end

  test "errors are atoms, bad arguments raise" do
    assert {:error, :enoent} = :emmap.open(~c"/nonexistent/emmap.bin", [:read])
    assert_raise ArgumentError, fn -> :emmap.open(~c"/tmp/x", [:no_such_option]) end
  end
end
