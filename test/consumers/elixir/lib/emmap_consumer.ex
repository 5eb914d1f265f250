defmodule EmmapConsumer do
  @moduledoc "Maps a file from Elixir, writes through emmap, reads back through :file."

  def run(path) do
    {:ok, m} = :emmap.open(String.to_charlist(path), 0, 64, [:create, :read, :write, :shared])
    :ok = :emmap.pwrite(m, 0, "hello from elixir")
    {:ok, bin} = :file.pread(m, 0, 17)
    {:ok, 0} = :emmap.patomic_add(m, 56, 7)
    {:ok, 7} = :emmap.patomic_read_integer(m, 56)
    :ok = :file.close(m)
    bin
  end
end
